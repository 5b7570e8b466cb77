"""ONNX Runtime: the backend that always works (CPU), and CUDA when onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from fervid.settings import get_settings
from models.backends.base import BackendProbe, BackendUnavailable

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class OrtBackend:
    def __init__(self, model_path: Path, providers: list[str] | None = None, max_batch: int = 256,
                 threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or [CPU_PROVIDER]
        model: str | bytes = str(model_path)
        if CUDA_PROVIDER in providers:
            model = _float_graph(model_path)
        self.session = ort.InferenceSession(model, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.name = "ort-cuda" if CUDA_PROVIDER in self.session.get_providers() else "ort-cpu"
        self.max_batch = max_batch

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)


def _float_graph(model_path: Path) -> str | bytes:
    """The model as CUDA runs it best: a graph quantized for the CPU (QDQ) is turned back into float, with the
    weights it was quantized to; CUDA would otherwise run every Quantize/Dequantize pair around float kernels."""
    import onnx  # the gpu extra brings it

    from models.graph_rewrites import float_graph, has_qdq

    model = onnx.load(str(model_path))
    if not has_qdq(model):
        return str(model_path)
    return bytes(float_graph(model).SerializeToString())


def probe(name: str) -> BackendProbe:
    providers = ort.get_available_providers()
    if name == "ort-cpu":
        return BackendProbe(name, True, f"onnxruntime {ort.__version__} on the CPU")
    if CUDA_PROVIDER in providers:
        return BackendProbe(name, True, f"onnxruntime {ort.__version__} with {CUDA_PROVIDER}")
    return BackendProbe(name, False, f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
                                     f"(providers: {', '.join(providers)}); install onnxruntime-gpu")


def create(name: str, model_path: Path, max_batch: int) -> OrtBackend:
    threads = get_settings().inference_threads
    if name == "ort-cpu":
        return OrtBackend(model_path, [CPU_PROVIDER], max_batch, threads)
    backend = OrtBackend(model_path, [CUDA_PROVIDER, CPU_PROVIDER], max_batch, threads)
    # onnxruntime-gpu falls back to the CPU silently when CUDA cannot start (no device, driver mismatch).
    if backend.name != "ort-cuda":
        raise BackendUnavailable(f"onnxruntime could not start {CUDA_PROVIDER} for {model_path} (no CUDA device or "
                                 "a CUDA/cuDNN version mismatch; see onnxruntime's warnings above)")
    return backend
