"""ONNX Runtime: the backend that always works (CPU), and CUDA when onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray


class OrtBackend:
    def __init__(self, model_path: Path, providers: list[str] | None = None, max_batch: int = 256) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = "ort-cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "ort-cpu"
        self.max_batch = max_batch

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)
