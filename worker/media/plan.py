"""The sampling plan: which frames a job analyses, chosen exactly from the stream's timing, and its segments."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction

from fervid.sampling import PlannedFrame


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # "video" | "image"
    width: int  # after rotation (what a viewer sees)
    height: int
    fps: float | None  # average frame rate of the video stream; None for images
    duration_ms: float  # 0.0 for images
    frame_count: int  # 1 for images
    rotation: int  # degrees clockwise applied to decoded frames: 0, 90, 180, 270
    mirrored: bool = False  # frames are mirrored left-right before the rotation


@dataclass(frozen=True)
class StreamIndex:
    """What demuxing the video stream's packets tells, in presentation order."""

    frame_pts: list[int]
    keyframe_pts: list[int]  # sorted; discarded keyframes (before an edit list's start) included: seeks use them
    first_pts: int
    end_pts: Fraction  # the last frame's pts plus its duration, in stream time_base units
    time_base: Fraction
    by_order: bool = False  # frame_pts count frames in output order (see fervid.sampling.PlannedFrame)
    keyframe_pos: list[int] = field(default_factory=list)  # by order: the file offset of each keyframe, or -1


def plan_frames(index: StreamIndex, duration_s: Fraction, sample_fps: float) -> list[PlannedFrame]:
    """For k = 0, 1, ... while k/F < duration: the first frame at or after k/F seconds, each frame once."""
    # The decimal the caller wrote (29.97, not its binary neighbour), so ticks on frame times are exact.
    rate = Fraction(repr(float(sample_fps)))
    plan: list[PlannedFrame] = []
    k = 0
    while k == 0 or k / rate < duration_s:
        # Exact in integers: time >= k/F  <=>  pts >= first_pts + k/F / time_base.
        position = bisect.bisect_left(index.frame_pts, math.ceil(index.first_pts + k / rate / index.time_base))
        if position == len(index.frame_pts):
            break
        pts = index.frame_pts[position]
        time_s = (pts - index.first_pts) * index.time_base
        keyframe_pts, keyframe_pos = _keyframe_before(index, pts)
        plan.append(PlannedFrame(frame_index=position, timestamp_ms=float(time_s * 1000), pts=pts,
                                 keyframe_pts=keyframe_pts, by_order=index.by_order, keyframe_pos=keyframe_pos))
        # Every k up to the selected frame's time selects it again: jump to the first k past it.
        k = math.floor(time_s * rate) + 1
    return plan


def _keyframe_before(index: StreamIndex, pts: int) -> tuple[int, int]:
    """The pts of the last keyframe at or before `pts`, and (timed by order) where its packet starts in the file."""
    position = bisect.bisect_right(index.keyframe_pts, pts)
    if not position:
        return index.first_pts, -1  # no keyframe flags: from the start
    offsets = index.keyframe_pos
    return index.keyframe_pts[position - 1], offsets[position - 1] if offsets else -1


def split_plan(plan: list[PlannedFrame], segment_ms: float) -> list[list[PlannedFrame]]:
    """Consecutive time ranges of about segment_ms each (by timestamp_ms), timed by order too; never an empty
    segment; one segment for short media. Every planned frame is in exactly one segment, order kept."""
    if not segment_ms > 0:
        raise ValueError(f"segment_ms must be > 0, not {segment_ms}")
    segments: list[list[PlannedFrame]] = []
    current_slot = None
    for frame in plan:
        slot = math.floor((frame.timestamp_ms - plan[0].timestamp_ms) / segment_ms)
        if slot != current_slot:
            segments.append([])
            current_slot = slot
        segments[-1].append(frame)
    return segments
