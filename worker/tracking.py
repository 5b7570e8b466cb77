"""FaceTracker: keeps one id per person across sampled frames, tolerating short misses."""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[int, int, int, int]  # x, y, w, h


def iou(a: Box, b: Box) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter_w = max(0, min(ax1, bx1) - max(a[0], b[0]))
    inter_h = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def centre_distance(a: Box, b: Box) -> float:
    """Distance between box centres in units of the boxes' mean size (scale-free)."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    size = (a[2] + a[3] + b[2] + b[3]) / 4
    return (dx * dx + dy * dy) ** 0.5 / max(size, 1.0)


def match_score(a: Box, b: Box, min_iou: float, max_centre_distance: float) -> float:
    """> 0 when `a` and `b` can be the same face; higher is a better match. At low sampling rates a moving face
    may not overlap its previous box, so a close centre of similar size also counts."""
    overlap = iou(a, b)
    if overlap >= min_iou:
        return 1.0 + overlap
    size_ratio = (b[2] * b[3]) / max(a[2] * a[3], 1)
    distance = centre_distance(a, b)
    if distance < max_centre_distance and 0.5 <= size_ratio <= 2.0:
        return 1.0 - distance / max_centre_distance
    return 0.0


def greedy_pairs(scores: list[tuple[float, int, int]]) -> list[tuple[int, int]]:
    """One-to-one pairs taken best score first: (score, left, right) -> [(left, right)]."""
    used_left: set[int] = set()
    used_right: set[int] = set()
    pairs = []
    for score, left, right in sorted(scores, reverse=True):
        if score > 0 and left not in used_left and right not in used_right:
            used_left.add(left)
            used_right.add(right)
            pairs.append((left, right))
    return pairs


@dataclass
class _Track:
    track_id: int
    box: Box
    last_ms: float


class FaceTracker:
    """Assigns track ids (0, 1, 2, ...) to the faces of successive frames of one segment."""

    def __init__(self, max_gap_ms: float = 1500.0, min_iou: float = 0.3, max_centre_distance: float = 0.6) -> None:
        self.max_gap_ms = max_gap_ms
        self.min_iou = min_iou
        self.max_centre_distance = max_centre_distance
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(self, timestamp_ms: float, boxes: list[Box]) -> list[int]:
        """Track ids for `boxes` (same order) seen at `timestamp_ms`; call with increasing timestamps."""
        self._tracks = [t for t in self._tracks if timestamp_ms - t.last_ms <= self.max_gap_ms]
        scores = [
            (match_score(track.box, box, self.min_iou, self.max_centre_distance), t_index, b_index)
            for t_index, track in enumerate(self._tracks)
            for b_index, box in enumerate(boxes)
        ]
        ids = [-1] * len(boxes)
        for t_index, b_index in greedy_pairs(scores):
            track = self._tracks[t_index]
            track.box, track.last_ms = boxes[b_index], timestamp_ms
            ids[b_index] = track.track_id
        for b_index, box in enumerate(boxes):
            if ids[b_index] < 0:
                self._tracks.append(_Track(self._next_id, box, timestamp_ms))
                ids[b_index] = self._next_id
                self._next_id += 1
        return ids
