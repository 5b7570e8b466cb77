"""Track stitching: one id per person across segment boundaries, as pure functions over each track's ends.

Segments are tracked independently (local ids 0, 1, 2, ... per segment). A track that ends near the end of
segment s is joined to the track that starts near the beginning of segment s + 1 when the time gap is short and
the boxes agree, one-to-one, best match first; chains of joins follow a person across many segments. Global ids
are then numbered 1, 2, 3, ... in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.tracking import Box, greedy_pairs, match_score

DEFAULT_MAX_GAP_MS = 1500.0  # the tracker's own tolerance for a missed face (worker/tracking.py)
DEFAULT_MIN_IOU = 0.3
DEFAULT_MAX_CENTRE_DISTANCE = 0.5  # in units of the boxes' mean size

TrackKey = tuple[int, int]  # (segment_index, local_track)


@dataclass(frozen=True)
class TrackSpan:
    """One segment-local track: where and when it was first and last seen, and on how many frames."""

    segment_index: int
    local_track: int
    first_ms: float
    first_box: Box
    last_ms: float
    last_box: Box
    frames: int

    @property
    def key(self) -> TrackKey:
        return (self.segment_index, self.local_track)


@dataclass(frozen=True)
class StitchedTrack:
    """A person followed across the whole job: a row of the `tracks` table."""

    track_id: int
    first_ms: float
    last_ms: float
    frames: int


@dataclass(frozen=True)
class Stitching:
    global_ids: dict[TrackKey, int]  # every input span's global track id
    tracks: list[StitchedTrack]  # ordered by track_id


def boundary_links(
    ending: Sequence[TrackSpan],
    starting: Sequence[TrackSpan],
    max_gap_ms: float = DEFAULT_MAX_GAP_MS,
    min_iou: float = DEFAULT_MIN_IOU,
    max_centre_distance: float = DEFAULT_MAX_CENTRE_DISTANCE,
) -> list[tuple[TrackKey, TrackKey]]:
    """One-to-one links (earlier track, later track) across one boundary, best box match first."""
    scores = []
    for left, before in enumerate(ending):
        for right, after in enumerate(starting):
            gap = after.first_ms - before.last_ms
            if 0 <= gap <= max_gap_ms:
                scores.append((match_score(before.last_box, after.first_box, min_iou, max_centre_distance), left,
                               right))
    return [(ending[left].key, starting[right].key) for left, right in greedy_pairs(scores)]


def stitch(
    spans: Sequence[TrackSpan],
    max_gap_ms: float = DEFAULT_MAX_GAP_MS,
    min_iou: float = DEFAULT_MIN_IOU,
    max_centre_distance: float = DEFAULT_MAX_CENTRE_DISTANCE,
) -> Stitching:
    """Global track ids for every span: joined across adjacent segments, numbered by (first_ms, first x)."""
    by_segment: dict[int, list[TrackSpan]] = {}
    for span in spans:
        by_segment.setdefault(span.segment_index, []).append(span)
    predecessor: dict[TrackKey, TrackKey] = {}
    for segment in sorted(by_segment):
        if segment + 1 in by_segment:
            for before, after in boundary_links(by_segment[segment], by_segment[segment + 1], max_gap_ms, min_iou,
                                                max_centre_distance):
                predecessor[after] = before

    def chain_root(key: TrackKey) -> TrackKey:
        while key in predecessor:
            key = predecessor[key]
        return key

    chains: dict[TrackKey, list[TrackSpan]] = {}
    for span in spans:
        chains.setdefault(chain_root(span.key), []).append(span)
    # A chain's root is its earliest span; the key's remaining fields only make ties deterministic.
    first_seen = {key: min((m.first_ms, m.first_box[0], m.first_box[1], m.key) for m in members)
                  for key, members in chains.items()}
    global_ids: dict[TrackKey, int] = {}
    tracks: list[StitchedTrack] = []
    for track_id, root in enumerate(sorted(chains, key=first_seen.__getitem__), start=1):
        members = chains[root]
        for member in members:
            global_ids[member.key] = track_id
        tracks.append(StitchedTrack(track_id, min(m.first_ms for m in members), max(m.last_ms for m in members),
                                    sum(m.frames for m in members)))
    return Stitching(global_ids, tracks)
