"""One sampled frame of a job's plan, as the probe makes it, segments.plan stores it and a decoder process takes it.

Shared plumbing: the API reads plans (a still's frame) and the worker makes and decodes them, so the record and its
one JSON form live here, free of any media library.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# A planned frame as JSON: [frame_index, timestamp_ms, pts, keyframe_pts, by_order (0 or 1), keyframe_pos]. Positional
# to stay small (a long video's plan holds a row per sampled frame) and readable by earlier releases; rows they wrote
# have four items (before by_order existed) or five (before keyframe_pos).
PlanJson = list[list[int | float]]
_OLDEST_ROW, _NEWEST_ROW = 4, 6


@dataclass(frozen=True, slots=True, kw_only=True)  # by name only: never a row of positions
class PlannedFrame:
    frame_index: int  # index of the frame in presentation order (0-based), counted over the whole stream
    timestamp_ms: float  # container timestamp relative to the first frame
    pts: int  # the stream pts (in stream time_base) used to seek/match while decoding; 0 for images
    keyframe_pts: int  # pts of the last keyframe at or before this frame (for the seek decision)
    # Timed by order: the stream has no timestamps, or ones that repeat or jump back (recordings joined end to
    # end); `pts` is then the frame's position in decoding output order, and decoding counts frames, never seeks:
    # `keyframe_pts` is the position of the keyframe it starts from (0: the first frame), `keyframe_pos` where
    # that keyframe's packet starts in the file (-1: unknown, decode from the start).
    by_order: bool = False
    keyframe_pos: int = -1


def plan_to_json(plan: Iterable[PlannedFrame]) -> PlanJson:
    """The plan in its JSON form: what segments.plan stores and what the decoder processes' pipes carry."""
    return [[frame.frame_index, frame.timestamp_ms, frame.pts, frame.keyframe_pts, int(frame.by_order),
             frame.keyframe_pos] for frame in plan]


def plan_from_json(rows: Iterable[Sequence[Any]]) -> list[PlannedFrame]:
    """The plan `plan_to_json` wrote, or an earlier release did (rows of four or five items: the fields after them
    take their defaults)."""
    plan = []
    for row in rows:
        if not _OLDEST_ROW <= len(row) <= _NEWEST_ROW:
            raise ValueError(f"a planned frame is {_OLDEST_ROW} to {_NEWEST_ROW} values, not {len(row)}: {row!r}")
        plan.append(PlannedFrame(frame_index=int(row[0]), timestamp_ms=float(row[1]), pts=int(row[2]),
                                 keyframe_pts=int(row[3]), by_order=len(row) > 4 and bool(row[4]),
                                 keyframe_pos=int(row[5]) if len(row) > 5 else -1))
    return plan
