"""The seam every inference backend matches: one batch in, one batch of raw model outputs out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from fervid.errors import BACKEND_UNAVAILABLE, FervidError
from fervid.settings import Settings


class InferenceBackend(Protocol):
    name: str  # "tensorrt" | "ort-cuda" | "ort-cpu" | "torch-cuda"
    max_batch: int  # the largest batch one `run` accepts; callers split bigger ones
    precision: str  # what the classifier computes in here: "fp32" | "fp16" | "int8"
    # Whether a second thread calling `run` while one runs adds a core's work: true where the caller's thread computes
    # (ONNX Runtime on the CPU), false on a GPU, whose one stream would only queue it.
    concurrent_runs: bool

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(N, C, H, W) preprocessed faces -> (N, classes) model outputs (probs or logits, per the model)."""
        ...


def run_in_batches(backend: InferenceBackend, batch: NDArray[np.float32]) -> NDArray[np.float32]:
    """`batch` of any size through `backend`, split at its `max_batch`: the one place batches are split."""
    step = backend.max_batch
    return np.concatenate([backend.run(batch[start : start + step]) for start in range(0, len(batch), step)])


class BackendUnavailable(FervidError):
    """A backend cannot run here; the message says why and what to install or choose instead."""

    code = BACKEND_UNAVAILABLE
    http_status = 503


@dataclass(frozen=True)
class BackendProbe:
    """Whether a backend can run on this machine, found without loading a model."""

    name: str
    available: bool
    detail: str  # why it can or cannot run, e.g. "cannot import tensorrt (No module named 'tensorrt')"


@dataclass(frozen=True)
class BackendOptions:
    """What backends take from the settings; built at the edge (`from_settings`) and passed to `create`."""

    threads: int  # intra-op threads (ONNX Runtime); 0: the runtime's own choice
    engine_cache_dir: Path  # TensorRT engines
    tensorrt_precision: str

    @classmethod
    def from_settings(cls, settings: Settings) -> BackendOptions:
        return cls(settings.inference_threads, settings.engine_cache_dir, settings.tensorrt_precision)
