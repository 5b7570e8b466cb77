"""The emotion labels, in FER-2013 order: the order of every output, column and export."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
