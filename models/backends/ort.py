"""ONNX Runtime: the backend that always works (CPU), and CUDA when onnxruntime-gpu is installed."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.backends.base import BackendOptions, BackendProbe, BackendUnavailable
from models.int8_check import read_int8_weights
from models.spec import WEIGHTS_KEY, read_metadata

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class OrtBackend:
    def __init__(self, model_path: Path, providers: list[str] | None = None, max_batch: int = 256,
                 threads: int = 0, as_float: bool = False) -> None:
        """`as_float`: run the float graph of a QDQ-quantized file (CUDA always does)."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle intra-op threads would spin-wait for the next batch, taking the cores that decoding and detection
        # run on meanwhile (the pipeline overlaps them).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers or [CPU_PROVIDER]
        quantized = is_quantized(model_path)
        # CUDA would run every Quantize/Dequantize pair around float kernels: it gets the float graph too.
        as_float = quantized and (as_float or CUDA_PROVIDER in providers)
        model = _float_graph(model_path) if as_float else str(model_path)
        self.session = ort.InferenceSession(model, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.name = "ort-cuda" if CUDA_PROVIDER in self.session.get_providers() else "ort-cpu"
        self.precision = "int8" if quantized and not as_float else "fp32"
        self.concurrent_runs = self.name == "ort-cpu"  # InferenceSession.run may be called from several threads
        self.max_batch = max_batch

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)


def is_quantized(model_path: Path) -> bool:
    """Whether the file is QDQ-quantized (what `fervid quantize` writes)."""
    stat = model_path.stat()
    return _is_quantized(model_path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _is_quantized(model_path: Path, size: int, mtime_ns: int) -> bool:
    weights = read_metadata(model_path).get(WEIGHTS_KEY)
    if weights:  # what `fervid export` and `fervid quantize` record: no need to import onnx and parse the graph
        return weights == "int8"
    import onnx  # a file from before the key: look at the graph

    from models.graph_rewrites import has_qdq

    return has_qdq(onnx.load(str(model_path), load_external_data=False))


def _float_graph(model_path: Path) -> bytes:
    """A graph quantized for the CPU (QDQ) turned back into float, with the weights it was quantized to."""
    import onnx  # the worker and gpu extras bring it

    from models.graph_rewrites import float_graph

    return bytes(float_graph(onnx.load(str(model_path))).SerializeToString())


def probe(name: str) -> BackendProbe:
    providers = ort.get_available_providers()
    if name == "ort-cpu":
        return BackendProbe(name, True, f"onnxruntime {ort.__version__} on the CPU")
    if CUDA_PROVIDER in providers:
        return BackendProbe(name, True, f"onnxruntime {ort.__version__} with {CUDA_PROVIDER}")
    return BackendProbe(name, False, f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
                                     f"(providers: {', '.join(providers)}); install onnxruntime-gpu")


def create(name: str, model_path: Path, max_batch: int, options: BackendOptions) -> OrtBackend:
    threads = options.threads
    if name == "ort-cpu":
        return OrtBackend(model_path, [CPU_PROVIDER], max_batch, threads,
                          as_float=not int8_cannot_saturate(model_path))
    backend = OrtBackend(model_path, [CUDA_PROVIDER, CPU_PROVIDER], max_batch, threads)
    # onnxruntime-gpu falls back to the CPU silently when CUDA cannot start (no device, driver mismatch).
    if backend.name != "ort-cuda":
        raise BackendUnavailable(f"onnxruntime could not start {CUDA_PROVIDER} for {model_path} (no CUDA device or "
                                 "a CUDA/cuDNN version mismatch; see onnxruntime's warnings above)")
    return backend


def int8_cannot_saturate(model_path: Path) -> bool:
    """Whether the file's integer kernels compute the same on every CPU (`models.int8_check`); a file that is not
    quantized has no integer kernels. Said once in the log when they may not."""
    if not is_quantized(model_path):
        return True
    stat = model_path.stat()
    return _int8_cannot_saturate(model_path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _int8_cannot_saturate(model_path: Path, size: int, mtime_ns: int) -> bool:
    weights = read_int8_weights(model_path)
    if not weights.cannot_saturate:
        log.warning("classifier %s: %s", model_path.name, weights.describe())
    return weights.cannot_saturate
