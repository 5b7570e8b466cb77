"""The emotion classifier at run time: crops in, probabilities out, as the artifact's spec (models/spec.py) says."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.backends.base import InferenceBackend, run_in_batches
from models.network_io import preprocess_faces, softmax, temperature_scaled
from models.spec import ModelSpec


class EmotionClassifier:
    """Crops in, 7-way probabilities out, in batches no larger than the backend takes."""

    def __init__(self, spec: ModelSpec, backend: InferenceBackend) -> None:
        self.spec = spec
        self.backend = backend

    def _forward(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        raw = run_in_batches(self.backend, batch)
        return softmax(raw) if self.spec.output == "logits" else raw

    def classify(self, crops: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        return self.classify_batch(self.prepare(crops))

    def prepare(self, crops: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """The network's input for `crops`: the half of `classify` that a pipeline can run on another thread."""
        return preprocess_faces(crops, self.spec.preprocess)

    def classify_batch(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Probabilities for a batch from `prepare`."""
        if len(batch) == 0:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        probs = self._forward(batch)
        if self.spec.tta == "hflip":
            probs = (probs + self._forward(np.ascontiguousarray(batch[..., ::-1]))) / 2.0
        return temperature_scaled(probs.astype(np.float32), self.spec.temperature)
