"""The check workers run when they load an INT8 classifier (models/int8_check.py): weights within 7 bits run the
integer kernels, wider ones (or ones it cannot read) the float graph, on every CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.backends.base import BackendOptions
from models.backends.ort import create
from models.cpu_features import read_cpu_features
from models.int8_check import NON_SATURATING_WEIGHT_PEAK, read_int8_weights
from models.spec import DEFAULT_MODEL_PATH, read_model_spec
from models.training.quantize import Target, quantize_int8
from tests.conftest import build_tiny_classifier


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory: pytest.TempPathFactory) -> dict[Target, Path]:
    """The tiny classifier quantized by `fervid quantize`'s code for each target: cpu (7-bit weights) and tensorrt
    (8-bit weights, as a file quantized elsewhere might have them)."""
    folder = tmp_path_factory.mktemp("int8")
    tiny = build_tiny_classifier(folder / "tiny.onnx")
    faces = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    preprocess = read_model_spec(tiny).preprocess
    return {target: quantize_int8(tiny, folder / f"{target}.onnx", faces, preprocess, target)
            for target in ("cpu", "tensorrt")}


def test_the_shipped_model_cannot_saturate_16_bit_sums() -> None:
    # given the shipped artifact: x86 CPUs without VNNI add pairs of u8 x s8 products in int16, which 7-bit
    # weights keep from overflowing whatever the input (2 x 255 x 64 <= 32767); this holds on every CPU
    weights = read_int8_weights(DEFAULT_MODEL_PATH)

    # then every one of its 53 convolutions' and its classifier's weights was read, and bounded
    assert weights.tensors == 54 and 0 < weights.peak <= NON_SATURATING_WEIGHT_PEAK
    assert weights.cannot_saturate and "INT8 kept" in weights.describe()


def test_the_cpu_target_writes_7_bit_weights_and_tensorrt_8_bit(tiny_int8: dict[Target, Path]) -> None:
    # when
    cpu, tensorrt = read_int8_weights(tiny_int8["cpu"]), read_int8_weights(tiny_int8["tensorrt"])

    # then
    assert cpu.tensors == 1 and cpu.cannot_saturate
    assert tensorrt.peak == 127 and not tensorrt.cannot_saturate
    assert "8-bit weights" in tensorrt.describe() and "float graph" in tensorrt.describe()


def test_one_weight_at_the_full_8_bit_range_is_enough_to_refuse(tiny_int8: dict[Target, Path],
                                                                 tmp_path: Path) -> None:
    # given a copy of the 7-bit file with one weight edited to -128
    model = onnx.load(str(tiny_int8["cpu"]))
    dequantized = {node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    (weight,) = [init for init in model.graph.initializer
                 if init.data_type == TensorProto.INT8 and init.name in dequantized]
    values = numpy_helper.to_array(weight).copy()
    values.flat[len(values.flat) // 2] = -128
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, tmp_path / "edited.onnx")

    # when
    weights = read_int8_weights(tmp_path / "edited.onnx")

    # then
    assert weights.peak == 128 and not weights.cannot_saturate


def test_a_weight_the_graph_quantizes_while_loading_counts_as_one_that_may_saturate(tmp_path: Path) -> None:
    # given a QDQ graph whose weight is stored in float and quantized by a QuantizeLinear: ONNX Runtime folds it into
    # int8 weights of whatever range the scale gives when it builds the session, which the file does not show
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    weight = numpy_helper.from_array(np.full((4, 2), 1.27, np.float32), "weight")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
             helper.make_node("QuantizeLinear", ["weight", "scale", "zero"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              initializer=[scale, zero, weight])
    onnx.save(helper.make_model(graph), tmp_path / "folded.onnx")

    # when
    weights = read_int8_weights(tmp_path / "folded.onnx")

    # then
    assert not weights.cannot_saturate and "quantized while the session loads" in weights.describe()


def test_a_worker_runs_the_float_graph_of_a_file_that_may_saturate_and_says_so_once(
        tiny_int8: dict[Target, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given a file with 8-bit weights, right on this CPU if it has VNNI, wrong on one without
    options = BackendOptions(threads=0, engine_cache_dir=tmp_path / "engines", tensorrt_precision="fp16")

    # when a worker builds its CPU backend for it, twice (a classifier rebuilt in the same process)
    with caplog.at_level(logging.WARNING, logger="models.backends.ort"):
        backends = [create("ort-cpu", tiny_int8["tensorrt"], 16, options) for _ in range(2)]

    # then it computes in float, whatever this CPU is, says why once, and still classifies
    assert [backend.precision for backend in backends] == ["fp32", "fp32"]
    (warning,) = [message for message in caplog.messages if "tensorrt.onnx" in message]
    assert "8-bit weights" in warning and "float graph" in warning
    np.testing.assert_allclose(backends[0].run(np.zeros((2, 1, 16, 16), np.float32)).sum(axis=1), 1.0, atol=1e-5)
    # and the 7-bit file keeps its integer kernels
    assert create("ort-cpu", tiny_int8["cpu"], 16, options).precision == "int8"


def test_the_doctor_gives_the_shipped_models_verdict(fervid_env: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # given the CLI as users run it, on the shipped model
    from fervid.cli import main

    # when
    main(["doctor"])

    # then
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("int8: ")]
    assert "7-bit weights" in line and "cannot saturate int16 on any CPU; INT8 kept" in line


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
