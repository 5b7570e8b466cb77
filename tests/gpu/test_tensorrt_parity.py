"""Real parity on a real GPU: TensorRT and torch-cuda against ONNX Runtime CPU. Skipped, with the reason, where
there is no CUDA device or no TensorRT (as on the development machines); nothing is faked here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.backends.base import run_in_batches
from models.engine_cache import BatchProfile, EngineCache
from models.network_io import preprocess_faces
from models.spec import DEFAULT_MODEL_PATH, read_model_spec

MIN_AGREEMENT = 0.99
MAX_PROB_DIFF = 5e-3


@pytest.fixture(scope="module")
def cuda_device() -> str:
    try:
        import torch
    except ImportError as error:
        pytest.skip(f"no CUDA: cannot import torch ({error})")
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device (torch {torch.__version__} sees none)")
    return str(torch.cuda.get_device_name())


@pytest.fixture(scope="module")
def tensorrt_version(cuda_device: str) -> str:
    try:
        import tensorrt
    except ImportError as error:
        pytest.skip(f"no tensorrt: cannot import tensorrt ({error})")
    return str(tensorrt.__version__)


@pytest.fixture
def public_faces(shared_dir: Path) -> np.ndarray:
    from models.training.fer2013 import load_split

    return load_split(shared_dir / "data" / "fer2013.npz", "public").head(512).faces


def reference(model: Path, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime CPU on the graph the GPU runs: for a model quantized for the CPU, its float equivalent (the
    GPU computes with the quantized weights in float, without the CPU's 8-bit activations)."""
    import onnx

    from models.graph_rewrites import float_graph

    graph = float_graph(onnx.load(str(model))).SerializeToString()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def assert_parity(candidate: np.ndarray, expected: np.ndarray, max_diff: float = MAX_PROB_DIFF) -> None:
    assert (candidate.argmax(axis=1) == expected.argmax(axis=1)).mean() >= MIN_AGREEMENT
    assert np.abs(candidate - expected).max() <= max_diff


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize(("precision", "max_diff"), [("fp32", 1e-4), ("fp16", MAX_PROB_DIFF)])
def test_tensorrt_matches_onnxruntime_cpu_on_the_tiny_model(tensorrt_version: str, tiny_model_path: Path,
                                                            tmp_path: Path, precision: str, max_diff: float) -> None:
    # given a real engine built on this GPU, with a batch that needs splitting at the profile's max
    from models.backends.tensorrt import TrtBackend

    batch = np.random.default_rng(3).normal(0, 1, (300, 1, 16, 16)).astype(np.float32)
    backend = TrtBackend(tiny_model_path, precision, BatchProfile(1, 32, 128), EngineCache(tmp_path))

    # when
    probs = run_in_batches(backend, batch)

    # then
    assert_parity(probs, reference(tiny_model_path, batch), max_diff)


@pytest.mark.gpu
@pytest.mark.trt
def test_workers_reuse_the_engine_built_once(tensorrt_version: str, tiny_model_path: Path, tmp_path: Path) -> None:
    # given an engine built by a first backend
    from models.backends.tensorrt import TrtBackend

    cache = EngineCache(tmp_path)
    TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 32), cache)
    built = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.engine")}

    # when a second backend (another worker) starts on the same key
    TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 32), cache)

    # then it loaded the same file rather than writing a new one
    assert len(built) == 1
    assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.engine")} == built
    (manifest,) = cache.manifests()
    assert manifest.tensorrt_version == tensorrt_version


@pytest.fixture
def shipped_model() -> Path:
    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL_PATH} (run `fervid export`)")
    return DEFAULT_MODEL_PATH


@pytest.mark.gpu
def test_torch_cuda_fp32_and_fp16_match_onnxruntime_on_real_faces(cuda_device: str, shipped_model: Path,
                                                                 public_faces: np.ndarray) -> None:
    # given real PublicTest faces, preprocessed as at run time
    import onnx

    from models.backends.torch_cuda import TorchCudaBackend
    from models.graph_rewrites import has_qdq

    if has_qdq(onnx.load(str(shipped_model))):
        pytest.skip("the shipped model is quantized (BatchNorm folded into int8 weights); torch-cuda rebuilds the "
                    "network from a float export's named weights")

    batch = preprocess_faces(list(public_faces), read_model_spec(shipped_model).preprocess)
    expected = reference(shipped_model, batch)

    # when
    fp32 = run_in_batches(TorchCudaBackend(shipped_model, 256, "cuda", fp16=False), batch)
    fp16 = run_in_batches(TorchCudaBackend(shipped_model, 256, "cuda", fp16=True), batch)

    # then
    assert_parity(fp32, expected, 1e-4)
    assert_parity(fp16, fp32)


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_fp16_matches_onnxruntime_on_real_faces(tensorrt_version: str, shipped_model: Path,
                                                         public_faces: np.ndarray, tmp_path: Path) -> None:
    # given
    from models.backends.tensorrt import TrtBackend

    batch = preprocess_faces(list(public_faces), read_model_spec(shipped_model).preprocess)

    # when
    probs = run_in_batches(TrtBackend(shipped_model, "fp16", BatchProfile.up_to(256), EngineCache(tmp_path)), batch)

    # then
    assert_parity(probs, reference(shipped_model, batch))
