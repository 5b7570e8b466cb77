"""What an annotated video draws on each frame: the faces of the sampled frames, moved to the frames between.

A track's box moves in a straight line between two of its samples less than GAP_INTERVALS sampling intervals apart
(the gap rule of fervid.results.track_runs and the viewer); its label and emotion bars are those of the nearer
sample. A track at either end of a run shows for half a sampling interval around its sample, as the viewer shows a
sampled frame's boxes. On a sampled frame every box is the timeline's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from fervid.labels import EMOTION_COLOURS, EMOTIONS, TRACK_COLOURS
from fervid.results import GAP_INTERVALS

SLACK_MS = 1.0  # media clocks and container timestamps round differently


@dataclass(frozen=True)
class DrawnFace:
    track_id: int
    box: tuple[float, float, float, float]  # x, y, w, h in the upright frame's pixels
    emotions: tuple[float, ...]  # in EMOTIONS order
    reliable: bool


@dataclass(frozen=True)
class FaceSample:
    """One sampled frame's faces, by track id."""

    timestamp_ms: float
    faces: Mapping[int, DrawnFace]


def samples_from_timeline(items: Iterable[Mapping[str, Any]]) -> Iterator[FaceSample]:
    """The timeline's items (fervid.results.iter_timeline) as samples."""
    for item in items:
        faces = {}
        for face in item["faces"]:
            box = face["box"]
            faces[face["track_id"]] = DrawnFace(
                face["track_id"], (box["x"], box["y"], box["w"], box["h"]),
                tuple(face["emotions"][label] for label in EMOTIONS), bool(face["quality"]["reliable"]))
        yield FaceSample(item["timestamp_ms"], faces)


class FaceTimeline:
    """The faces to draw at each time, asked in time order; reads `samples` (in time order) only as far as it needs."""

    def __init__(self, samples: Iterable[FaceSample], interval_ms: float) -> None:
        self._samples = iter(samples)
        self._interval_ms = interval_ms
        self._ahead: deque[FaceSample] = deque()  # samples after the time asked last
        self._last: dict[int, tuple[float, DrawnFace]] = {}  # each track's latest sample at or before it
        self._exhausted = False

    def faces_at(self, time_ms: float) -> list[DrawnFace]:
        reach_ms = GAP_INTERVALS * self._interval_ms + SLACK_MS
        while not self._exhausted and (not self._ahead or self._ahead[-1].timestamp_ms <= time_ms + reach_ms):
            sample = next(self._samples, None)
            if sample is None:
                self._exhausted = True
            else:
                self._ahead.append(sample)
        while self._ahead and self._ahead[0].timestamp_ms <= time_ms + SLACK_MS / 2:
            passed = self._ahead.popleft()
            for track_id, passed_face in passed.faces.items():
                self._last[track_id] = (passed.timestamp_ms, passed_face)
        drawn = {track_id: face for track_id, (since_ms, before) in list(self._last.items())
                 if (face := self._moved(track_id, since_ms, before, time_ms)) is not None}
        for sample in self._ahead:  # tracks whose run starts just after: from half an interval before its sample
            if sample.timestamp_ms - time_ms > self._interval_ms / 2 + SLACK_MS:
                break
            for track_id, coming in sample.faces.items():
                drawn.setdefault(track_id, coming)
        return [drawn[track_id] for track_id in sorted(drawn)]

    def _next_of(self, track_id: int) -> tuple[float, DrawnFace] | None:
        for sample in self._ahead:
            face = sample.faces.get(track_id)
            if face is not None:
                return sample.timestamp_ms, face
        return None

    def _moved(self, track_id: int, since_ms: float, before: DrawnFace, time_ms: float) -> DrawnFace | None:
        after = self._next_of(track_id)
        if after is not None and after[0] - since_ms <= GAP_INTERVALS * self._interval_ms:
            until_ms, next_face = after
            share = (time_ms - since_ms) / (until_ms - since_ms)
            box = tuple(a + (b - a) * share for a, b in zip(before.box, next_face.box, strict=True))
            nearer = before if share <= 0.5 else next_face
            return DrawnFace(track_id, (box[0], box[1], box[2], box[3]), nearer.emotions, nearer.reliable)
        if time_ms - since_ms <= self._interval_ms / 2 + SLACK_MS:
            return before
        if time_ms - since_ms > GAP_INTERVALS * self._interval_ms:
            del self._last[track_id]  # its run ended: nothing more of it until its next sample passes
        return None


def _bgr(colour: str) -> tuple[int, int, int]:
    value = int(colour.lstrip("#"), 16)
    return value & 0xFF, (value >> 8) & 0xFF, value >> 16


EMOTION_BGR = [_bgr(EMOTION_COLOURS[label]) for label in EMOTIONS]
WHITE, DARK = (255, 255, 255), (32, 32, 32)


class FacePainter:
    """Draws faces on frames of one size: a box in its track's colour (dashed when the face is not reliable), the
    track id, top emotion and its probability above it, and a bar of the seven probabilities under it."""

    def __init__(self, width: int, height: int, track_ids: Iterable[int]) -> None:
        # The viewer's colours: the job's tracks in ascending order take TRACK_COLOURS in turn.
        self._colours = {track_id: _bgr(TRACK_COLOURS[rank % len(TRACK_COLOURS)])
                         for rank, track_id in enumerate(sorted(set(track_ids)))}
        self._scale = max(1.0, min(width, height) / 480)  # lines and text grow with the frame
        self._line = max(2, round(2 * self._scale))

    def paint(self, image: NDArray[np.uint8], faces: Iterable[DrawnFace]) -> None:
        for face in faces:
            colour = self._colours.get(face.track_id, WHITE)
            x, y, w, h = (round(value) for value in face.box)
            if face.reliable:
                cv2.rectangle(image, (x, y), (x + w, y + h), colour, self._line, cv2.LINE_AA)
            else:
                _dashed_rectangle(image, (x, y, w, h), colour, self._line, dash=round(8 * self._scale))
            self._label(image, face, (x, y, w, h), colour)
            self._bars(image, face, (x, y, w, h))

    def _label(self, image: NDArray[np.uint8], face: DrawnFace, box: tuple[int, int, int, int],
               colour: tuple[int, int, int]) -> None:
        top = int(np.argmax(face.emotions))
        text = f"#{face.track_id} {EMOTIONS[top]} {face.emotions[top]:.0%}" + ("" if face.reliable else " ?")
        font_scale, thickness = 0.5 * self._scale, max(1, round(self._scale))
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        x, y, _, h = box
        pad = round(3 * self._scale)
        label_h = text_h + baseline + 2 * pad
        top_y = y - label_h if y - label_h >= 0 else y + h  # above the box, or under it at the frame's top
        cv2.rectangle(image, (x, top_y), (x + text_w + 2 * pad, top_y + label_h), colour, cv2.FILLED)
        cv2.putText(image, text, (x + pad, top_y + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, WHITE,
                    thickness, cv2.LINE_AA)

    def _bars(self, image: NDArray[np.uint8], face: DrawnFace, box: tuple[int, int, int, int]) -> None:
        x, y, w, h = box
        bar_w = max(4, round(8 * self._scale))
        full_h = round(28 * self._scale)
        gap = max(1, round(self._scale))
        bottom = y + h + self._line + full_h + 2 * gap
        if bottom > image.shape[0]:
            bottom = y + h - self._line  # no room under the box: inside its bottom edge
        left = x
        cv2.rectangle(image, (left, bottom - full_h - 2 * gap), (left + len(EMOTIONS) * (bar_w + gap) + gap, bottom),
                      DARK, cv2.FILLED)
        for position, (probability, colour) in enumerate(zip(face.emotions, EMOTION_BGR, strict=True)):
            bar_left = left + gap + position * (bar_w + gap)
            bar_h = max(1, round(probability * full_h))
            cv2.rectangle(image, (bar_left, bottom - gap - bar_h), (bar_left + bar_w - 1, bottom - gap), colour,
                          cv2.FILLED)


def _dashed_rectangle(image: NDArray[np.uint8], box: tuple[int, int, int, int], colour: tuple[int, int, int],
                      thickness: int, dash: int) -> None:
    x, y, w, h = box
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:], strict=False):
        length = max(abs(x1 - x0), abs(y1 - y0))
        for start in range(0, length, 2 * dash):
            end = min(start + dash, length)
            cv2.line(image, (x0 + (x1 - x0) * start // length, y0 + (y1 - y0) * start // length),
                     (x0 + (x1 - x0) * end // length, y0 + (y1 - y0) * end // length), colour, thickness)
