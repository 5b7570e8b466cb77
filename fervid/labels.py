"""The emotion labels, in FER-2013 order: the order of every output, column and export."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# One fixed colour per emotion, shared by plot.png and the viewer page (served to it as /viewer/palette.json).
EMOTION_COLOURS: dict[str, str] = {
    "angry": "#d62728", "disgust": "#6b8e23", "fear": "#9467bd", "happy": "#f2b701",
    "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#9e9e9e",
}
assert tuple(EMOTION_COLOURS) == EMOTIONS
