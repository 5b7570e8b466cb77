"""The seam every inference backend matches: one batch in, one batch of raw model outputs out."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray


class InferenceBackend(Protocol):
    name: str  # "tensorrt" | "ort-cuda" | "ort-cpu" | "torch-cuda"
    max_batch: int  # the largest batch one `run` accepts; callers split bigger ones

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(N, C, H, W) preprocessed faces -> (N, classes) model outputs (probs or logits, per the model)."""
        ...
