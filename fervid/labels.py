"""The emotion labels, in FER-2013 order: the order of every output, column and export."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# One fixed colour per emotion, shared by plot.png and the viewer page (served to it as /viewer/palette.json).
EMOTION_COLOURS: dict[str, str] = {
    "angry": "#d62728", "disgust": "#6b8e23", "fear": "#9467bd", "happy": "#f2b701",
    "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#9e9e9e",
}
assert tuple(EMOTION_COLOURS) == EMOTIONS

# The colour of each track, in the order of the job's track ids: the viewer's boxes and charts, and annotated videos.
TRACK_COLOURS: tuple[str, ...] = ("#00a2d9", "#e6007e", "#2e9d3a", "#ff6a00", "#6f42c1", "#00897b", "#b08900",
                                  "#795548", "#3f51b5", "#c2185b")
