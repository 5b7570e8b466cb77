"""The backend registry, ONNX Runtime CPU parity, and the torch backend run on the CPU (all real, no fakes)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import models.backends as backends
from fervid.errors import BACKEND_UNAVAILABLE, FervidError
from fervid.settings import Settings
from models.backends import BackendOptions, resolve_backend, select_backend
from models.backends.base import BackendUnavailable, run_in_batches
from tests.conftest import ROOT

REGISTRY_LOGGER = "models.backends"
OPTIONS = BackendOptions.from_settings(Settings.model_construct())  # the defaults, not this environment


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT not importable, even on a machine that has it (None in sys.modules makes `import` fail)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(backends, "_logged_choices", set())


@pytest.fixture
def no_cuda_provider() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here, so ort-cuda is not the fallback under test")


def faces(count: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(7).normal(0, 1, (count, 1, size, size)).astype(np.float32)


def test_auto_falls_back_to_ort_cpu_with_one_log_line_giving_the_reason(
        no_tensorrt: None, no_cuda_provider: None, tiny_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given TensorRT cannot be imported and onnxruntime has no CUDA provider
    caplog.set_level(logging.INFO, logger=REGISTRY_LOGGER)

    # when the worker selects twice (two analyzers in one process)
    backend = select_backend(tiny_model_path, "auto", max_batch=32, options=OPTIONS)
    select_backend(tiny_model_path, "auto", max_batch=32, options=OPTIONS)

    # then ort-cpu, and exactly one line that says why TensorRT and ORT CUDA were passed over
    assert backend.name == "ort-cpu" and backend.max_batch == 32
    lines = [record.getMessage() for record in caplog.records if record.name == REGISTRY_LOGGER]
    assert len(lines) == 1
    assert lines[0].startswith("inference backend ort-cpu: tensorrt: cannot import tensorrt (")
    assert "ort-cuda: onnxruntime" in lines[0] and lines[0].endswith("using ort-cpu")


def test_explicit_tensorrt_that_cannot_run_raises_backend_unavailable(
        no_tensorrt: None, tiny_model_path: Path) -> None:
    # given TensorRT cannot be imported

    # when / then asking for it is an error that says why, not a silent fallback
    with pytest.raises(BackendUnavailable) as raised:
        select_backend(tiny_model_path, "tensorrt", options=OPTIONS)
    assert raised.value.code == BACKEND_UNAVAILABLE == "backend_unavailable"
    assert "cannot import tensorrt" in raised.value.message and "fervid doctor" in raised.value.message


def test_explicit_ort_cuda_without_onnxruntime_gpu_raises(no_cuda_provider: None, tiny_model_path: Path) -> None:
    # given / when / then
    with pytest.raises(BackendUnavailable, match="install onnxruntime-gpu"):
        select_backend(tiny_model_path, "ort-cuda", options=OPTIONS)


def test_unknown_backend_name_is_refused(tiny_model_path: Path) -> None:
    # given / when / then
    with pytest.raises(FervidError) as raised:
        select_backend(tiny_model_path, "tensorflow", options=OPTIONS)
    assert raised.value.code == "unknown_backend" and "ort-cpu" in raised.value.message


def test_explicit_ort_cpu_is_chosen_as_asked(tiny_model_path: Path) -> None:
    # given / when
    backend, choice = resolve_backend(tiny_model_path, "ort-cpu", options=OPTIONS)

    # then
    assert (backend.name, choice.name) == ("ort-cpu", "ort-cpu")
    assert "FERVID_BACKEND=ort-cpu" in choice.reason


def test_ort_cpu_backend_matches_a_direct_onnxruntime_session(tiny_model_path: Path) -> None:
    # given
    batch = faces(40)
    session = ort.InferenceSession(str(tiny_model_path), providers=["CPUExecutionProvider"])

    # when
    probs = select_backend(tiny_model_path, "ort-cpu", options=OPTIONS).run(batch)

    # then
    np.testing.assert_allclose(probs, session.run(None, {"faces": batch})[0], rtol=1e-6, atol=1e-7)


def test_choosing_a_backend_imports_neither_torch_nor_tensorrt(tiny_model_path: Path) -> None:
    # given a fresh interpreter (this one has imported torch for other tests)
    script = ("import json, sys; from pathlib import Path; from fervid.settings import Settings; "
              "from models.backends import BackendOptions, select_backend; "
              f"b = select_backend(Path({str(tiny_model_path)!r}), 'auto', "
              "options=BackendOptions.from_settings(Settings.model_construct())); "
              "print(json.dumps([b.name, 'torch' in sys.modules, 'tensorrt' in sys.modules]))")

    # when
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)

    # then
    name, torch_loaded, tensorrt_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert not torch_loaded
    assert not tensorrt_loaded or name == "tensorrt"


def test_doctor_explains_every_backend_here(no_tensorrt: None, fervid_env: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # given this machine: TensorRT absent; the CLI as users run it
    from fervid.cli import main

    # when
    code = main(["doctor"])

    # then every backend has a line with a reason, and ort-cpu always can run
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:5]}
    assert set(rows) == {"tensorrt", "ort-cuda", "ort-cpu", "torch-cuda"}
    assert "cannot import tensorrt" in rows["tensorrt"]
    assert rows["ort-cpu"].split()[1] == "yes"
    assert "FERVID_BACKEND=auto: the classifier would run on" in out


def test_doctor_exits_1_when_the_configured_backend_cannot_run(
        no_tensorrt: None, fervid_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # given
    from fervid.cli import main

    fervid_env.setenv("FERVID_BACKEND", "tensorrt")

    # when
    code = main(["doctor"])

    # then
    assert code == 1
    assert "FERVID_BACKEND=tensorrt: cannot run here" in capsys.readouterr().out


# --- the torch backend, on the CPU (the GPU run is in tests/gpu) -------------------------------------------------

RESNET_SIZE = 32


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX export of a freshly initialised EmotionResNet50 (probs output), with fervid's metadata.

    Made here because models/training/export.py may not exist yet; the exporter keeps state_dict names on initializers.
    BatchNorm statistics are randomised so the weights loaded by name visibly matter; two tensors are left equal
    so the exporter deduplicates them into an Identity alias, as it does for real exports.
    """
    import onnx
    import torch

    from fervid.labels import EMOTIONS
    from models.spec import LABELS_KEY, NAME_KEY, OUTPUT_KEY, PREPROCESS_KEY, Preprocess
    from models.training.network import EmotionResNet50

    torch.manual_seed(0)
    network = EmotionResNet50().eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        network.layer4[2].bn3.bias.copy_(network.layer4[1].bn3.bias)
    path = tmp_path_factory.mktemp("resnet") / "resnet.onnx"
    torch.onnx.export(network, torch.zeros(1, 1, RESNET_SIZE, RESNET_SIZE), str(path), input_names=["faces"],
                      output_names=["logits"], dynamic_axes={"faces": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False, do_constant_folding=False, opset_version=17)
    model = onnx.load(str(path))
    # The network returns logits; a probs model ends in softmax, as `fervid export` writes it.
    model.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    model.graph.output[0].name = "probs"
    preprocess = Preprocess(size=(RESNET_SIZE, RESNET_SIZE), channels=1, scale=1 / 255, mean=(0.5,), std=(0.25,))
    for key, value in {LABELS_KEY: ",".join(EMOTIONS), PREPROCESS_KEY: preprocess.to_json(), OUTPUT_KEY: "probs",
                       NAME_KEY: "fresh-resnet50"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_torch_backend_loads_onnx_weights_by_name_and_matches_onnxruntime(resnet_onnx: Path) -> None:
    # given the export, read back by ONNX Runtime as the reference
    from models.backends.torch_cuda import TorchCudaBackend

    batch = faces(6, RESNET_SIZE)
    reference = ort.InferenceSession(str(resnet_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"faces": batch})[0]

    # when the torch backend rebuilds the network from the ONNX's initializers (on the CPU here)
    probs = run_in_batches(TorchCudaBackend(resnet_onnx, max_batch=4, device="cpu"), batch)

    # then it computes what the ONNX computes, softmax included
    assert probs.shape == (6, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, reference, atol=1e-5)


def test_torch_backend_refuses_a_model_without_resnet_weights(tiny_model_path: Path) -> None:
    # given the tiny flatten-linear model
    from models.backends.torch_cuda import TorchCudaBackend

    # when / then
    with pytest.raises(BackendUnavailable, match="lacks .* weights EmotionResNet50 needs .*conv1.weight"):
        TorchCudaBackend(tiny_model_path, device="cpu")


def test_fp16_conversion_of_a_resnet_export_agrees_with_fp32(resnet_onnx: Path, tmp_path: Path) -> None:
    # given the ResNet50 export and its fp16 conversion (what TensorRT 11 parses for fp16)
    import onnx

    from models.backends.tensorrt import convert_to_fp16

    onnx.save(convert_to_fp16(onnx.load(str(resnet_onnx))), tmp_path / "fp16.onnx")
    batch = faces(8, RESNET_SIZE)

    # when
    fp32 = ort.InferenceSession(str(resnet_onnx), providers=["CPUExecutionProvider"]).run(None, {"faces": batch})[0]
    fp16 = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"faces": batch})[0]

    # then
    assert fp16.dtype == np.float32
    assert np.abs(fp16 - fp32).max() <= 5e-3
    assert (fp16.argmax(axis=1) == fp32.argmax(axis=1)).mean() >= 0.99


def test_gpu_check_cpu_smoke_runs_here(shared_dir: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    # given the prepared GPU script in its reduced CPU mode, on real FER-2013 faces
    out = tmp_path / "out"

    # when
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke", "--model",
                           str(tiny_model_path), "--faces", "40", "--seconds", "0.2"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OUT": str(out)})

    # then it measured ORT CPU at each batch and checked the fp16 graph's parity, and wrote its JSON
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["faces"] == 40
    assert [(row["backend"], row["batch"]) for row in report["throughput"]] == [("ort-cpu fp32", 1),
                                                                                ("ort-cpu fp32", 32)]
    assert all(row["faces_per_s"] > 0 for row in report["throughput"])
    (parity,) = report["parity"]
    assert parity["candidate"] == "ort-cpu fp16-graph" and parity["passed"] is True
    assert "faces/s" in done.stdout


def test_doctor_says_which_detector_workers_would_run_and_why_without_downloading(
        no_tensorrt: None, fervid_env: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # given no YuNet configured or cached, and a download URL nothing may be fetched from
    from fervid.cli import main

    fervid_env.setenv("FERVID_MODEL_PATH", str(tiny_model_path))
    fervid_env.setenv("FERVID_DETECTOR_URL", "http://127.0.0.1:9/face_detection_yunet_2023mar.onnx")

    # when the doctor runs, then again with the URL empty (an air-gapped site)
    main(["doctor"])
    planned = capsys.readouterr().out
    fervid_env.setenv("FERVID_DETECTOR_URL", "")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    main(["doctor"])
    air_gapped = capsys.readouterr().out

    # then it names the first-use download, then Haar with the reason and what to do; nothing was downloaded
    (line,) = [line for line in planned.splitlines() if line.startswith("detector:")]
    assert line.startswith("detector: workers would run yunet after a first-use download (from http://127.0.0.1:9/")
    (line,) = [line for line in air_gapped.splitlines() if line.startswith("detector:")]
    assert line.startswith("detector: workers would run haar (no YuNet in")
    assert "FERVID_DETECTOR_URL is empty" in line and "fervid models fetch" in line
    assert not any((tmp_path / "model-cache").glob("*.onnx"))
