"""What the analysis of a segment produces, as plain records: worker.pipeline makes them, worker.record_store stores
them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FaceRecord:
    face_index: int
    local_track: int
    box: tuple[int, int, int, int]  # x, y, w, h
    score: float
    probs: Sequence[float]  # 7 values in FER order (fervid.labels.EMOTIONS)
    sharpness: float | None = None  # models.face_quality.sharpness of the classifier's crop
    yaw: float | None = None  # degrees, from the detector's landmarks (None: a detector without them)
    roll: float | None = None


@dataclass(frozen=True)
class FrameRecord:
    frame_index: int
    timestamp_ms: float
    faces: list[FaceRecord]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    backend: str
    precision: str  # what the backend computes in: "int8" | "fp32" | "fp16"
    detector: str  # the face detector: "yunet" | "haar"
