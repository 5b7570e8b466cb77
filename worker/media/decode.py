"""The decode loop: only the frames a plan (or one segment of it) needs, as upright BGR images, in plan order."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import numpy as np
from numpy.typing import NDArray

from fervid.sampling import PlannedFrame
from worker.media.geometry import Display, pixel_aspect
from worker.media.index import decoded, packets, video_stream
from worker.media.limits import check_pixels, file_size
from worker.media.sniff import open_container, open_container_at
from worker.media.stills import decode_animation, decode_still, is_pillow_animation, open_pillow

log = logging.getLogger(__name__)

# Decoded frames held back so that a damaged stream's out-of-order output is put back in pts order.
REORDER_DEPTH = 8
SEEK_RETRIES = 3  # earlier and earlier seeks (1 s, 2 s, 4 s before the keyframe) when one lands too late


def decode_planned(path: Path, plan: list[PlannedFrame], warnings: list[str],
                   max_pixels: int) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
    """Decode only what the plan needs and yield (planned frame, upright BGR image) in plan order.
    Frames that cannot be decoded are skipped and described once in `warnings` (appended, human-readable)."""
    if not plan:
        return
    file_size(path)
    image = open_pillow(path, max_pixels)
    if image is not None:
        with image:
            if not is_pillow_animation(image):
                yield plan[0], decode_still(image)
                return
            yield from decode_animation(image, plan)
        return
    yield from _decode_video(path, plan, warnings, max_pixels)


def _decode_video(path: Path, plan: list[PlannedFrame], warnings: list[str],
                  max_pixels: int) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
    if plan[0].by_order:
        yield from _decode_by_order(path, plan, warnings, max_pixels)
        return
    with open_container(path) as container:
        stream = video_stream(container, max_pixels)
        check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        decoder = _PlanDecoder(container, stream, plan)
        yield from decoder.frames()
    warnings.extend(decoder.warnings())


def _decode_by_order(path: Path, plan: list[PlannedFrame], warnings: list[str],
                     max_pixels: int) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
    """A plan timed by order, decoded from the restart point before its first frame (or from the first frame)."""
    decoder = _OrderDecoder(plan)
    first = plan[0]
    if first.keyframe_pts > 0 and first.keyframe_pos >= 0:
        with open_container(path) as container:
            demuxer = container.format.name
        try:
            with open_container_at(path, first.keyframe_pos, demuxer) as container:
                yield from decoder.frames(container, max_pixels, first.keyframe_pts)
        except MemoryError:
            raise  # the decoder process's memory limit
        except (_NotARestart, av.error.FFmpegError) as error:
            if decoder.cursor.matched:
                raise
            log.info("cannot start at the keyframe at byte %d (%s): decoding from the first frame",
                     first.keyframe_pos, error)
            decoder = _OrderDecoder(plan)
        else:
            warnings.extend(decoder.warnings())
            return
    with open_container(path) as container:
        yield from decoder.frames(container, max_pixels, 0)
    warnings.extend(decoder.warnings())


class _NotARestart(Exception):
    """Decoding from a restart point did not begin with its keyframe."""


class _OrderDecoder:
    """Decodes a stream timed by order: frames are numbered as they come out, from the position of the keyframe
    decoding starts at. Each packet is stamped with its position in decoding order, which its frame carries out, so
    the frame of every restart point the plan names gets that position again: decoding from the first frame and
    from a restart point give the same frames the same positions, even where damage lost a frame before."""

    def __init__(self, plan: list[PlannedFrame]) -> None:
        self.plan = plan
        self.cursor = _PlanCursor(plan)
        self.anchors = {planned.keyframe_pts for planned in plan}
        self.retimed = False  # the packets carried timestamps, not usable ones

    def frames(self, container: av.container.InputContainer, max_pixels: int,
               start: int) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
        stream = video_stream(container, max_pixels)
        check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        aspect = pixel_aspect(stream)
        stamp = position = start - 1
        checked = start == 0
        for packet in packets(container, stream):
            if packet.size and not packet.is_discard:  # as the index counts frames
                self.retimed |= packet.pts is not None or packet.dts is not None
                stamp += 1
                packet.pts = packet.dts = stamp
            for frame in decoded(packet, stream):
                if not checked:
                    if frame.pts != start:
                        raise _NotARestart(f"the first frame out came from packet {frame.pts}, not {start}")
                    checked = True
                position = frame.pts if frame.pts in self.anchors else position + 1
                planned = self.cursor.match(position)
                if planned is not None:
                    yield planned, Display.of(frame, aspect).image(frame)
                if self.cursor.done:
                    return

    def warnings(self) -> list[str]:
        warnings = []
        if self.retimed:
            warnings.append("the video's timestamps repeat or run backwards (recordings joined end to end?); its "
                            "frames are timed by their order at the stream's frame rate")
        return warnings + _missed_warnings(self.cursor)


def _missed_warnings(cursor: _PlanCursor) -> list[str]:
    missed = len(cursor.plan) - cursor.matched
    if not missed:
        return []
    return [f"{missed} of {len(cursor.plan)} sampled frames could not be decoded (damaged or truncated data) and "
            "were skipped"]


class _PlanCursor:
    """Walks the plan: each planned frame takes the first decoded frame at or after its pts and before the next
    planned one; a planned frame passed over without one is lost."""

    def __init__(self, plan: list[PlannedFrame]) -> None:
        self.plan = plan
        self.position = 0
        self.matched = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.plan)

    @property
    def current(self) -> PlannedFrame:
        return self.plan[self.position]

    def match(self, pts: int) -> PlannedFrame | None:
        while self.position + 1 < len(self.plan) and self.plan[self.position + 1].pts <= pts:
            self.position += 1
        if self.done or self.current.pts > pts:
            return None
        self.position += 1
        self.matched += 1
        return self.plan[self.position - 1]


class _PlanDecoder:
    """Decodes sequentially, seeking to a planned frame's keyframe only when it lies past what was decoded;
    converts only the frames the plan takes."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 plan: list[PlannedFrame]) -> None:
        self.container, self.stream = container, stream
        self.plan = plan
        self.cursor = _PlanCursor(plan)
        self.held: list[tuple[int, int, av.VideoFrame]] = []  # a heap by pts: (pts, arrival, frame)
        self.arrivals = 0
        self.pixel_aspect = pixel_aspect(stream)
        self.reached = stream.start_time if stream.start_time is not None else plan[0].keyframe_pts
        self.one_second = max(1, round(1 / stream.time_base)) if stream.time_base else 1
        self.last_pts = -1
        self.can_seek = True
        self.seek_to: int | None = None
        self.retries = 0
        self.awaiting_first = False  # a seek was made and no frame has come out of it yet
        self.packets = packets(container, stream)

    def frames(self) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
        while not self.cursor.done:
            if self.seek_to is None and self.can_seek and self._keyframe_ahead():
                yield from self._jump_over_a_gap()
                if self.cursor.done:
                    break
            if self.seek_to is not None:
                self._seek(self.seek_to)
            packet = next(self.packets, None)
            if packet is None:
                if self._seek_earlier_after_a_late_landing():
                    continue
                break
            self._hold(decoded(packet, self.stream))
            yield from self._release(keep=REORDER_DEPTH)
        yield from self._release(keep=0)

    def warnings(self) -> list[str]:
        return _missed_warnings(self.cursor)

    def _keyframe_ahead(self) -> bool:
        """The next planned frame's keyframe lies past what was decoded: seeking there skips the gap."""
        return self.cursor.current.keyframe_pts > self.reached

    def _jump_over_a_gap(self) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
        """Releases what is held (it may still match planned frames before the gap), then aims a seek at the next
        planned frame's keyframe when that still lies ahead."""
        yield from self._release(keep=0)
        if not self.cursor.done and self._keyframe_ahead():
            self.seek_to, self.retries = self.cursor.current.keyframe_pts, 0

    def _seek(self, pts: int) -> None:
        self.can_seek = self.awaiting_first = _seek_keyframe_before(self.container, self.stream, pts)
        self.reached, self.seek_to = max(self.reached, self.cursor.current.keyframe_pts), None
        self.packets = packets(self.container, self.stream)

    def _seek_earlier_after_a_late_landing(self) -> bool:
        """Containers without a keyframe index (MPEG-TS, ...) can land past the keyframe: aims a seek 1 s, 2 s, 4 s
        before it; False when no seek awaits its first frame or the retries are spent."""
        if not (self.awaiting_first and self.retries < SEEK_RETRIES):
            return False
        self.seek_to = self.cursor.current.keyframe_pts - self.one_second * 2 ** self.retries
        self.retries += 1
        return True

    def _next_pts(self, frame: av.VideoFrame) -> int:
        """The frame's place: its pts, or one past the last frame's when it carries none."""
        return self.last_pts + 1 if frame.pts is None else frame.pts

    def _hold(self, frames: list[av.VideoFrame]) -> None:
        """Holds back the frames at or past the next planned one, to be released in pts order."""
        for frame in frames:
            self.last_pts = self._next_pts(frame)
            if self.last_pts > self.cursor.current.pts and self._seek_earlier_after_a_late_landing():
                return  # this packet's remaining frames lie past the planned frame too
            self.awaiting_first = False
            self.reached = max(self.reached, self.last_pts)
            if self.last_pts >= self.cursor.current.pts:
                heapq.heappush(self.held, (self.last_pts, self.arrivals, frame))
                self.arrivals += 1

    def _release(self, keep: int) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
        """Pops held frames in pts order until `keep` remain, yielding those the plan takes, upright."""
        while len(self.held) > keep:
            pts, _, frame = heapq.heappop(self.held)
            planned = self.cursor.match(pts)
            if planned is not None:
                yield planned, Display.of(frame, self.pixel_aspect).image(frame)


def _seek_keyframe_before(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                          pts: int) -> bool:
    """Seeks to the keyframe at or before pts; False when the container cannot seek."""
    log.debug("seek to pts %d", pts)
    try:
        container.seek(pts, stream=stream, backward=True)
    except (av.error.FFmpegError, OSError):
        return False
    return True
