"""plot.png: a swimlane of the dominant emotion per track over a stacked area per track, in the shared palette."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fervid.labels import EMOTION_COLOURS, EMOTIONS
from fervid.results import TrackSeries, render_plot_png, track_runs


def _pixels_of(png: bytes, colour: str) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return int((np.abs(rgb - target).max(axis=2) <= 2).sum())


def _constant_track(track_id: int, label: str, timestamps_ms: list[float]) -> TrackSeries:
    probabilities = {name: [0.7 if name == label else 0.05] * len(timestamps_ms) for name in EMOTIONS}
    return TrackSeries(track_id, timestamps_ms, probabilities)


def test_a_gap_longer_than_one_and_a_half_intervals_splits_a_track() -> None:
    # given samples every 200 ms with one missing stretch, and a lone sample at the end
    timestamps = [0.0, 200.0, 400.0, 1000.0, 1200.0, 2000.0]
    # when / then
    assert track_runs(timestamps, 200.0) == [slice(0, 3), slice(3, 5), slice(5, 6)]
    assert track_runs([], 200.0) == []


def test_the_plot_draws_each_tracks_emotions_in_the_shared_palette() -> None:
    # given a happy track and a sad one, each with a gap
    times = [float(ms) for ms in range(0, 4000, 200) if not 1400 <= ms < 2400]
    series = [_constant_track(1, "happy", times), _constant_track(2, "sad", times)]

    # when
    png = render_plot_png(series, "two tracks", 200.0)

    # then the dominant colours fill the swimlane and the areas; the others show as thin layers and the legend
    assert png[:4] == b"\x89PNG"
    happy, sad = _pixels_of(png, EMOTION_COLOURS["happy"]), _pixels_of(png, EMOTION_COLOURS["sad"])
    assert happy > 5000 and sad > 5000
    assert all(_pixels_of(png, EMOTION_COLOURS[label]) > 20 for label in EMOTIONS)
    assert _pixels_of(png, EMOTION_COLOURS["angry"]) < happy / 4


def test_a_track_absent_for_a_while_leaves_a_blank_gap_in_its_area() -> None:
    # given one track seen for the first and last second of four, and the same track seen throughout
    seen = [float(ms) for ms in range(0, 4000, 200)]
    gapped = [ms for ms in seen if ms < 1000 or ms >= 3000]

    # when
    whole = _pixels_of(render_plot_png([_constant_track(1, "happy", seen)], "t", 200.0), EMOTION_COLOURS["happy"])
    holed = _pixels_of(render_plot_png([_constant_track(1, "happy", gapped)], "t", 200.0), EMOTION_COLOURS["happy"])

    # then about half the colour is gone (an interpolated area across the gap would keep it)
    assert 0.35 * whole < holed < 0.65 * whole
