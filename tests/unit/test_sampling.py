"""The sampling rule and segment splitting, on real files made at test time and the shared clips."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench.media_factory import write_still, write_video
from fervid.sampling import PlannedFrame, plan_from_json, plan_to_json
from fervid.settings import Settings
from worker.media.limits import MediaLimits
from worker.media.plan import MediaInfo, split_plan
from worker.media.probe import probe

# The limits the settings default to, whatever the developer's environment says.
LIMITS = MediaLimits.from_settings(Settings.model_construct())


def test_constant_rate_clip_is_sampled_at_the_first_frame_at_or_after_each_tick(tmp_path: Path) -> None:
    # given 72 frames at 24 fps (3 s), with B-frames and a keyframe every 12 frames
    clip = write_video(tmp_path / "clip.mp4", frame_count=72, fps=24, gop=12)
    # when sampled at 5 fps
    info, plan = probe(clip, 5, LIMITS)
    # then ticks k/5 s pick frame ceil(24k/5), k = 0..14, at that frame's own timestamp
    assert info == MediaInfo(kind="video", width=160, height=96, fps=24.0, duration_ms=3000.0, frame_count=72,
                             rotation=0)
    expected = [0, 5, 10, 15, 20, 24, 29, 34, 39, 44, 48, 53, 58, 63, 68]
    assert [f.frame_index for f in plan] == expected
    assert [f.timestamp_ms for f in plan] == pytest.approx([i * 1000 / 24 for i in expected], abs=1e-9)


def test_keyframe_pts_is_the_last_keyframe_at_or_before_each_planned_frame(tmp_path: Path) -> None:
    # given a clip with a keyframe every 10 frames
    clip = write_video(tmp_path / "clip.mp4", frame_count=50, fps=25, gop=10)
    # when every frame is planned
    _, plan = probe(clip, 25, LIMITS)
    # then each frame points at the keyframe that opens its group
    ticks_per_frame = plan[1].pts - plan[0].pts
    assert [f.frame_index for f in plan] == list(range(50))
    assert [f.keyframe_pts for f in plan] == [(i - i % 10) * ticks_per_frame for i in range(50)]


def test_a_rate_above_the_frame_rate_takes_each_frame_once(tmp_path: Path) -> None:
    # given 24 frames at 24 fps
    clip = write_video(tmp_path / "clip.mp4", frame_count=24, fps=24)
    # when sampled at 60 fps (several ticks fall on the same frame)
    _, plan = probe(clip, 60, LIMITS)
    # then every frame is planned exactly once, in order
    assert [f.frame_index for f in plan] == list(range(24))


def test_a_rate_below_one_frame_per_second_still_starts_at_frame_zero(tmp_path: Path) -> None:
    # given a 3 s clip
    clip = write_video(tmp_path / "clip.mp4", frame_count=72, fps=24)
    # when sampled every 2.5 s
    _, plan = probe(clip, 0.4, LIMITS)
    # then ticks 0 s and 2.5 s are taken
    assert [f.frame_index for f in plan] == [0, 60]


def test_variable_frame_rate_follows_the_container_timestamps(tmp_path: Path) -> None:
    # given ten frames at irregular times (ms)
    pts_ms = [0, 40, 80, 200, 210, 220, 600, 1000, 1010, 1500]
    clip = write_video(tmp_path / "vfr.mp4", pts_ms=pts_ms)
    # when sampled at 5 fps (ticks every 200 ms up to the 1500 ms frame plus its duration)
    info, plan = probe(clip, 5, LIMITS)
    # then, by hand: 0->#0, 200->#3, 400->#6 (600), 600->#6, 800->#7 (1000), 1000->#7, 1200->#9, 1400->#9
    assert [f.frame_index for f in plan] == [0, 3, 6, 7, 9]
    assert [f.timestamp_ms for f in plan] == pytest.approx([0, 200, 600, 1000, 1500])
    assert info.frame_count == 10 and info.duration_ms > 1500


def test_an_image_is_one_frame_at_time_zero(tmp_path: Path) -> None:
    # given a PNG still
    still = write_still(tmp_path / "still.png")
    # when probed at any rate
    info, plan = probe(still, 30, LIMITS)
    # then it is one frame, index 0, t = 0, pts 0
    assert info == MediaInfo(kind="image", width=160, height=96, fps=None, duration_ms=0.0, frame_count=1,
                             rotation=0)
    assert plan == [PlannedFrame(frame_index=0, timestamp_ms=0.0, pts=0, keyframe_pts=0)]


def test_the_shared_clip_is_sampled_from_its_real_timestamps(shared_dir: Path) -> None:
    # given the shared 640x360 clip of 72 frames at 30 fps
    clip = shared_dir / "media" / "single_face.mp4"
    # when sampled at 5 fps
    info, plan = probe(clip, 5, LIMITS)
    # then every sixth frame is taken over its 2.4 s
    assert (info.kind, info.width, info.height, info.frame_count) == ("video", 640, 360, 72)
    assert info.duration_ms == pytest.approx(2400.0)
    assert [f.frame_index for f in plan] == list(range(0, 72, 6))


def test_edit_list_frames_before_the_start_are_not_counted(shared_dir: Path) -> None:
    # given a shared clip whose first packets fall before its edit list's start (negative pts)
    clip = shared_dir / "media" / "no_face.mp4"
    # when probed
    info, plan = probe(clip, 1000, LIMITS)
    # then only the frames a player shows are counted, the first at t = 0
    assert info.frame_count == 95 and len(plan) == 95
    assert plan[0].timestamp_ms == 0.0 and plan[0].keyframe_pts < plan[0].pts


@pytest.mark.parametrize("sample_fps", [0, -1, math.nan, math.inf])
def test_sample_fps_must_be_positive(tmp_path: Path, sample_fps: float) -> None:
    # given a valid clip
    clip = write_video(tmp_path / "clip.mp4", frame_count=5)
    # when / then
    with pytest.raises(ValueError, match="sample_fps"):
        probe(clip, sample_fps, LIMITS)


def planned(times_ms: list[float]) -> list[PlannedFrame]:
    return [PlannedFrame(frame_index=index, timestamp_ms=t, pts=index * 10, keyframe_pts=0)
            for index, t in enumerate(times_ms)]


def test_split_plan_cuts_consecutive_time_ranges_covering_every_frame_once() -> None:
    # given frames every 100 ms over 10 s, with a 3 s hole between 4 s and 7 s
    plan = planned([t * 100.0 for t in range(100) if not 40 <= t < 70])
    # when split into 2 s segments
    segments = split_plan(plan, 2000.0)
    # then the segments are the 2 s ranges that hold frames (0-2, 2-4, 6-8, 8-10 s), none empty, order kept
    assert [s[0].timestamp_ms for s in segments] == [0.0, 2000.0, 7000.0, 8000.0]
    assert [len(s) for s in segments] == [20, 20, 10, 20]
    assert [f for s in segments for f in s] == plan


def test_split_plan_keeps_short_media_in_one_segment() -> None:
    # given 3 s of frames
    plan = planned([t * 250.0 for t in range(12)])
    # when split into 30 s segments
    segments = split_plan(plan, 30_000.0)
    # then there is one segment with everything
    assert segments == [plan]


def test_split_plan_of_nothing_is_no_segments_and_the_length_must_be_positive() -> None:
    assert split_plan([], 1000.0) == []
    with pytest.raises(ValueError, match="segment_ms"):
        split_plan(planned([0.0]), 0)


def test_a_planned_frame_is_read_from_the_rows_every_release_wrote() -> None:
    # given one frame as plan_to_json writes it, and as releases before `by_order` (4 values) and before
    # `keyframe_pos` (5 values) stored it
    frame = PlannedFrame(frame_index=12, timestamp_ms=480.0, pts=6144, keyframe_pts=5120, by_order=True,
                         keyframe_pos=9000)
    (row,) = plan_to_json([frame])
    # when read back
    read = plan_from_json([row, row[:4], [12, 480.0, 6144, 5120, 1]])
    # then the fields a row lacks take their defaults, and a row of another length is refused, not guessed at
    assert row == [12, 480.0, 6144, 5120, 1, 9000]
    assert read == [frame, replace(frame, by_order=False, keyframe_pos=-1), replace(frame, keyframe_pos=-1)]
    for bad in ([12, 480.0, 6144], [*row, 0]):
        with pytest.raises(ValueError, match="4 to 6 values"):
            plan_from_json([bad])
