"""Annotated videos: which boxes each frame shows (worker/overlay.py), and `fervid analyze --annotate` writing a video
whose every frame is the source's with the timeline's boxes drawn where the timeline says."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from fervid.labels import EMOTIONS, TRACK_COLOURS
from tests.unit.test_analyze_command import run_cli
from worker.overlay import DrawnFace, FacePainter, FaceSample, FaceTimeline

INTERVAL_MS = 200.0  # 5 fps sampling
HAPPY = tuple(1.0 if label == "happy" else 0.0 for label in EMOTIONS)
SAD = tuple(1.0 if label == "sad" else 0.0 for label in EMOTIONS)


def face(track_id: int, x: float, emotions: tuple[float, ...] = HAPPY, reliable: bool = True) -> DrawnFace:
    return DrawnFace(track_id, (x, 50.0, 40.0, 40.0), emotions, reliable)


def sample(time_ms: float, *faces: DrawnFace) -> FaceSample:
    return FaceSample(time_ms, {drawn.track_id: drawn for drawn in faces})


def boxes(timeline: FaceTimeline, time_ms: float) -> dict[int, float]:
    return {drawn.track_id: drawn.box[0] for drawn in timeline.faces_at(time_ms)}


def test_sampled_frames_show_the_timelines_boxes_and_the_frames_between_move_them_in_a_straight_line() -> None:
    # given a track sampled at 0, 200 and 400 ms moving right, and a second track from 200 ms on
    samples = [sample(0, face(1, 0)), sample(200, face(1, 100, SAD), face(2, 300)), sample(400, face(1, 120),
                                                                                         face(2, 300))]
    timeline = FaceTimeline(samples, INTERVAL_MS)
    # when frames at 30 fps are asked for, in order
    seen = {time_ms: timeline.faces_at(time_ms) for time_ms in (0.0, 50.0, 150.0, 200.0, 300.0, 400.0, 499.0)}
    # then sampled frames have the sampled boxes, and frames between are on the line between them
    assert [f.box[0] for f in seen[0.0]] == [0.0]
    assert [f.box[0] for f in seen[50.0]] == [25.0]
    assert {f.track_id: f.box[0] for f in seen[200.0]} == {1: 100.0, 2: 300.0}
    assert {f.track_id: f.box[0] for f in seen[300.0]} == {1: 110.0, 2: 300.0}
    # and the label is the nearer sample's: happy until half way, then sad
    assert seen[50.0][0].emotions == HAPPY and seen[150.0][0].emotions == SAD
    # and a track's first sample shows from half an interval before it (track 2 at 150 ms), its last until half
    # an interval after (both at 499 ms, 400 + 100 less a millisecond of slack)
    assert {f.track_id for f in seen[150.0]} == {1, 2}
    assert {f.track_id for f in seen[499.0]} == {1, 2}


def test_a_track_is_not_drawn_across_a_gap_and_ends_half_an_interval_after_its_last_sample() -> None:
    # given a track sampled at 0 ms, missing at 200 and 400 ms (a gap of 2 intervals), and back at 600 ms
    timeline = FaceTimeline([sample(0, face(1, 0)), sample(200), sample(400), sample(600, face(1, 600))],
                            INTERVAL_MS)
    # when
    seen = {time_ms: boxes(timeline, time_ms) for time_ms in (0.0, 90.0, 150.0, 300.0, 450.0, 550.0, 600.0, 800.0)}
    # then it stays where it was sampled for half an interval, then is gone until half an interval before its return
    assert seen == {0.0: {1: 0.0}, 90.0: {1: 0.0}, 150.0: {}, 300.0: {}, 450.0: {}, 550.0: {1: 600.0},
                    600.0: {1: 600.0}, 800.0: {}}


def test_the_timeline_reads_its_samples_only_as_far_as_the_time_asked() -> None:
    # given samples that count how far they were read
    read: list[float] = []

    def samples() -> Any:
        for index in range(1000):
            read.append(index * INTERVAL_MS)
            yield sample(index * INTERVAL_MS, face(1, float(index)))

    timeline = FaceTimeline(samples(), INTERVAL_MS)
    # when the first second is drawn
    for time_ms in range(0, 1000, 33):
        timeline.faces_at(float(time_ms))
    # then only the samples up to the reach of the gap rule were read
    assert max(read) <= 1000 + 2 * INTERVAL_MS


def edge_colour_distance(image: NDArray[np.uint8], x: float, y0: float, y1: float, colour: str) -> float:
    """How far the pixels of the vertical line at x (best of x-1, x, x+1), rows y0..y1, are from `colour`."""
    value = int(colour.lstrip("#"), 16)
    bgr = np.array([value & 0xFF, (value >> 8) & 0xFF, value >> 16], dtype=np.float32)
    rows = slice(int(y0), int(y1))
    return min(float(np.abs(image[rows, column].astype(np.float32) - bgr).mean())
               for column in range(max(0, round(x) - 1), min(image.shape[1], round(x) + 2)))


def assert_boxes_drawn_as_the_timeline_says(frames: Sequence[NDArray[np.uint8]],
                                            timeline: Sequence[Mapping[str, Any]]) -> None:
    """Each sampled frame's faces have their box's left and right edges drawn in their track's colour, and the
    lines 8 pixels beside them are not: the boxes are where the timeline says, not merely somewhere."""
    track_ids = sorted({f["track_id"] for item in timeline for f in item["faces"]})
    checked = 0
    for item in timeline:
        image = frames[item["frame_index"]]
        for drawn in item["faces"]:
            colour = TRACK_COLOURS[track_ids.index(drawn["track_id"]) % len(TRACK_COLOURS)]
            x, y, w, h = (drawn["box"][key] for key in ("x", "y", "w", "h"))
            for edge in (x, x + w):
                on = edge_colour_distance(image, edge, y + h / 4, y + 3 * h / 4, colour)
                beside = min(edge_colour_distance(image, edge + shift, y + h / 4, y + 3 * h / 4, colour)
                             for shift in (-8, 8))
                assert on < 45 and on < beside - 30, (item["frame_index"], drawn["track_id"], edge, on, beside)
                checked += 1
    assert checked, "the timeline has no faces to check"


def decoded_frames(path: Path) -> list[NDArray[np.uint8]]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def test_painted_boxes_are_found_where_they_were_drawn() -> None:
    # given a grey frame and one face painted on it at a known box
    image = np.full((360, 640, 3), 128, dtype=np.uint8)
    FacePainter(640, 360, [7]).paint(image, [DrawnFace(7, (200.0, 100.0, 120.0, 150.0), HAPPY, True)])
    item = {"frame_index": 0, "faces": [{"track_id": 7, "box": {"x": 200, "y": 100, "w": 120, "h": 150}}]}
    # then the check finds it, and finds nothing at a box 20 pixels off
    assert_boxes_drawn_as_the_timeline_says([image], [item])
    moved = {"frame_index": 0, "faces": [{"track_id": 7, "box": {"x": 220, "y": 100, "w": 120, "h": 150}}]}
    with pytest.raises(AssertionError):
        assert_boxes_drawn_as_the_timeline_says([image], [moved])


def test_analyze_annotate_writes_every_frame_with_the_timelines_boxes(
    tmp_path: Path, tiny_model_path: Path, shared_dir: Path, yunet_path: Path
) -> None:
    # given the embedded defaults pointed at a scratch database, a tiny model and YuNet
    env = {"FERVID_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}", "FERVID_MODEL_PATH": str(tiny_model_path),
           "FERVID_DETECTOR_PATH": str(yunet_path)}
    clip = shared_dir / "media" / "single_face.mp4"
    # when a clip is analysed with --annotate, and with an --annotate that is not an MP4
    done = run_cli(["analyze", str(clip), "--fps", "5", "--no-progress", "--annotate", str(tmp_path / "out.mp4")],
                   env)
    refused = run_cli(["analyze", str(clip), "--annotate", str(tmp_path / "out.avi")], env)
    # then the video has the source's frames, size and rate, and the timeline's boxes on its sampled frames
    assert done.returncode == 0, done.stderr
    timeline = json.loads(done.stdout)["timeline"]
    source, annotated = decoded_frames(clip), decoded_frames(tmp_path / "out.mp4")
    assert len(annotated) == len(source) and annotated[0].shape == source[0].shape
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 30
    assert_boxes_drawn_as_the_timeline_says(annotated, timeline)
    assert refused.returncode == 2 and "--annotate writes an MP4" in refused.stderr
