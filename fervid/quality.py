"""Whether a face's emotions can be trusted: the measures stored with it, and the thresholds of `reliable`.

Each threshold is where the classifier's top-1 on FER-2013 PublicTest faces, made small, blurred or tilted (or, for
yaw, as the runtime estimates it), interpolated linearly between measured points, falls RELIABLE_TOP1_LOSS under
the unmodified faces' (bench/detect_size.py, bench/face_quality.py; models/MODEL_CARD.md, "Which faces can be
read"). A measure a face lacks (a detector without landmarks) does not count against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_

from fervid.tables import Face

RELIABLE_TOP1_LOSS = 0.05
# The box's longer side: 28 px 58.9 %, 32 px 63.5 % against 65.8 % at 48 px.
MIN_SIZE_PX = 30
# models.face_quality.sharpness: [320, 640) 62.1 %, [640, 1280) 66.2 % against 67.2 % unblurred (log-scale bin
# centres). The sharp real clip's faces measure over 1,000 (tests/integration/test_end_to_end.py).
MIN_SHARPNESS = 450.0
# Degrees: yaw |20-30| 63.3 %, |30-40| 58.1 % (bin centres); roll 15 63.9 %, 20 61.1 %; against 67.2 %.
MAX_ABS_YAW = 27.0
MAX_ABS_ROLL = 18.0
REASONS = ("small", "blurred", "turned", "tilted")


@dataclass(frozen=True)
class FaceQuality:
    size_px: int
    sharpness: float | None
    yaw: float | None
    roll: float | None
    top_probability: float
    margin: float  # the top probability less the second
    unreliable_because: tuple[str, ...]  # of REASONS

    @property
    def reliable(self) -> bool:
        return not self.unreliable_because

    def to_dict(self) -> dict[str, Any]:
        return {"size_px": self.size_px, "sharpness": _rounded(self.sharpness, 1), "yaw_deg": _rounded(self.yaw, 1),
                "roll_deg": _rounded(self.roll, 1), "top_probability": round(self.top_probability, 4),
                "margin": round(self.margin, 4), "reliable": self.reliable,
                "unreliable_because": list(self.unreliable_because)}


def face_quality(box: tuple[int, int, int, int], probabilities: Mapping[str, float] | Sequence[float],
                 sharpness: float | None, yaw: float | None, roll: float | None) -> FaceQuality:
    values = sorted(probabilities.values() if isinstance(probabilities, Mapping) else probabilities, reverse=True)
    size = max(box[2], box[3])
    reasons = [reason for reason, failed in (
        ("small", size < MIN_SIZE_PX),
        ("blurred", sharpness is not None and sharpness < MIN_SHARPNESS),
        ("turned", yaw is not None and abs(yaw) > MAX_ABS_YAW),
        ("tilted", roll is not None and abs(roll) > MAX_ABS_ROLL)) if failed]
    return FaceQuality(size, sharpness, yaw, roll, values[0], values[0] - values[1], tuple(reasons))


def reliable_face() -> ColumnElement[bool]:
    """`reliable` in SQL, over the faces table: the summaries and the plot use these faces."""
    return and_(or_(Face.w >= MIN_SIZE_PX, Face.h >= MIN_SIZE_PX),
                or_(Face.sharpness.is_(None), Face.sharpness >= MIN_SHARPNESS),
                or_(Face.yaw.is_(None), func.abs(Face.yaw) <= MAX_ABS_YAW),
                or_(Face.roll.is_(None), func.abs(Face.roll) <= MAX_ABS_ROLL))


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
