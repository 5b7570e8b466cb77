"""The INT8 classifier against its own float graph, on the CPU the tests run on, and the worker's fallback."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.backends.ort import create
from models.cpu_features import read_cpu_features
from models.detectors import HaarDetector
from models.int8_check import (
    AGREEMENT_FLOOR,
    NON_SATURATING_WEIGHT_PEAK,
    PORTRAIT_FACE,
    cached_int8_check,
    check_faces,
    decided_agreement,
    int8_weight_peak,
    portrait_image,
    run_int8_check,
)
from models.spec import DEFAULT_MODEL_PATH, read_model_spec
from models.training.quantize import quantize_int8


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture
def tiny_int8_path(tiny_model_path: Path, tmp_path: Path) -> Path:
    faces = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    preprocess = read_model_spec(tiny_model_path).preprocess
    return quantize_int8(tiny_model_path, tmp_path / "tiny-int8.onnx", faces, preprocess)


def test_the_check_faces_sit_where_the_cascade_finds_the_portraits_face() -> None:
    # when the detector that ships with OpenCV looks at the portrait
    (found, *_) = HaarDetector().detect(portrait_image())

    # then the fixed box the check faces are framed on is that face
    assert iou(found.box, PORTRAIT_FACE) > 0.8


def test_the_check_faces_are_the_same_every_time_and_varied() -> None:
    # when
    faces = check_faces.__wrapped__()

    # then
    assert faces.shape == (256, 48, 48) and faces.dtype == np.uint8
    np.testing.assert_array_equal(faces, check_faces.__wrapped__())
    assert faces.reshape(len(faces), -1).mean(axis=1).std() > 10  # lit differently, not one face 256 times


def test_the_shipped_model_cannot_saturate_16_bit_sums() -> None:
    # given the shipped artifact: x86 CPUs without VNNI add pairs of u8 x s8 products in int16, which 7-bit
    # weights keep from overflowing whatever the input (2 x 255 x 64 <= 32767); this holds on every CPU
    peak = int8_weight_peak(onnx.load(str(DEFAULT_MODEL_PATH)))

    # then
    assert 0 < peak <= NON_SATURATING_WEIGHT_PEAK


def test_the_shipped_model_computes_here_what_its_float_graph_does() -> None:
    # when the worker's start-up check runs on the CPU the tests run on
    check = run_int8_check(DEFAULT_MODEL_PATH)

    # then the fused integer kernels agree with the float graph on the faces the float graph decides
    assert check.faces >= 200
    assert check.agreement >= AGREEMENT_FLOOR, check.describe()
    assert check.trusted and check.cpu == read_cpu_features().describe()


def test_the_cpu_target_writes_7_bit_weights_and_tensorrt_8_bit(tiny_model_path: Path, tmp_path: Path) -> None:
    # given
    spec = read_model_spec(tiny_model_path)
    faces = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)

    # when
    cpu = quantize_int8(tiny_model_path, tmp_path / "cpu.onnx", faces, spec.preprocess, "cpu")
    trt = quantize_int8(tiny_model_path, tmp_path / "trt.onnx", faces, spec.preprocess, "tensorrt")

    # then
    assert int8_weight_peak(onnx.load(str(cpu))) <= NON_SATURATING_WEIGHT_PEAK
    assert int8_weight_peak(onnx.load(str(trt))) == 127


def test_near_ties_do_not_count_against_agreement() -> None:
    # given float outputs: one face decided (0.7 vs 0.2), one a near-tie (0.41 vs 0.40)
    as_float = np.array([[0.7, 0.2, 0.1], [0.41, 0.40, 0.19]], np.float32)
    fused = np.array([[0.6, 0.3, 0.1], [0.39, 0.42, 0.19]], np.float32)  # the tie flips, the decided face holds

    # then
    assert decided_agreement(fused, as_float) == (1.0, 1)
    assert decided_agreement(fused[::-1].copy(), as_float)[0] == 0.0  # a decided face that flips counts


def test_the_check_is_run_once_per_model_and_cpu(tiny_int8_path: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # given a check already run here
    first = cached_int8_check(tiny_int8_path, tmp_path / "cache")

    # when a later worker start asks again
    monkeypatch.setattr("models.int8_check.run_int8_check", lambda *_: pytest.fail("checked twice"))
    again = cached_int8_check(tiny_int8_path, tmp_path / "cache")

    # then
    assert again == first and first.trusted


def test_a_worker_runs_the_float_graph_where_the_int8_check_failed(
        tiny_int8_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given the check's record for this CPU says the fused kernels disagreed. No CPU here miscomputes (the ones that
    # do lack VNNI), so the record stands in for that CPU's result; the code path after it is the real one.
    from models.backends.base import BackendOptions

    options = BackendOptions(threads=0, model_cache_dir=tmp_path / "model-cache", engine_cache_dir=tmp_path / "engines",
                             tensorrt_precision="fp16")
    cache = options.model_cache_dir
    good = cached_int8_check(tiny_int8_path, cache)
    (record,) = cache.glob("int8-check-*.json")
    record.write_text(json.dumps(asdict(replace(good, agreement=0.73))))

    # when the worker builds its CPU backend
    with caplog.at_level(logging.WARNING):
        backend = create("ort-cpu", tiny_int8_path, 16, options)

    # then it computes in float, says why once, and still classifies
    assert backend.precision == "fp32"
    assert any("73.0%" in message and "float graph" in message for message in caplog.messages)
    batch = np.zeros((2, 1, 16, 16), np.float32)
    np.testing.assert_allclose(backend.run(batch).sum(axis=1), 1.0, atol=1e-5)
    # and with the record as this CPU really measured it, INT8 is kept
    record.write_text(json.dumps(asdict(good)))
    assert create("ort-cpu", tiny_int8_path, 16, options).precision == "int8"


def test_cpu_features_name_what_decides_the_integer_kernels(tmp_path: Path) -> None:
    # given an AVX2 CPU without VNNI, and an ARM CPU with the dot-product extension
    avx2 = tmp_path / "avx2"
    avx2.write_text("model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd40\n")

    # then
    x86 = read_cpu_features(avx2)
    assert x86.features == ("AVX2",) and not x86.has_int8_dot and "AMD EPYC 7B12" in x86.describe()
    neon = read_cpu_features(arm)
    assert neon.features == ("NEON", "NEON-DOTPROD", "I8MM") and neon.has_int8_dot
