"""Media probing, frame sampling and decoding: which frames a job analyses, and their upright BGR pixels.

`probe` demuxes packets (no decoding beyond one frame) to plan the sampled frames with exact indices and
container timestamps; `split_plan` cuts that plan into segments workers share; `decode_planned` decodes only
what a plan (or one segment of it) needs, seeking to keyframes across long gaps.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import struct
import warnings as py_warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.error
import cv2
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from numpy.typing import NDArray
from pi_heif import register_heif_opener
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from fervid.errors import (
    DECODE_ERROR,
    EMPTY_MEDIA,
    MEDIA_TOO_LARGE,
    SOURCE_UNAVAILABLE,
    UNSUPPORTED_MEDIA,
    MediaError,
)
from fervid.settings import get_settings

log = logging.getLogger(__name__)

# HEIC/HEIF photos (phones' default) open as stills: libheif assembles the tile grid phones write and applies
# the rotation and mirror properties; FFmpeg would see one tile as a one-frame video.
register_heif_opener()

# Errors Pillow raises for a damaged image, besides OSError.
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
# Clockwise degrees that EXIF orientations 1-8 rotate by, after a left-right mirror for 2, 4, 5 and 7
# (exif_transpose does both).
EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 270, 6: 90, 7: 90, 8: 270}
EXIF_MIRRORED = {2, 4, 5, 7}
# Animated formats FFmpeg cannot decode: Pillow reads their frames and per-frame durations instead.
PILLOW_ONLY_ANIMATIONS = frozenset({"WEBP"})
DEFAULT_ANIMATION_FRAME_MS = 100  # what browsers show a frame that declares no duration for
# Non-square pixels past these ratios are treated as a damaged header, not as anamorphic video.
PIXEL_ASPECT_RANGE = (Fraction(1, 8), Fraction(8))
# Leading bytes of containers FFmpeg reads: a file that starts like one but won't open is damaged, not foreign.
CONTAINER_SIGNATURES = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba",
                        b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", b"\x89PNG", b"\xff\xd8\xff", b"GIF8")
ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
TS_PACKET = 188
# Decoded frames held back so that a damaged stream's out-of-order output is put back in pts order.
REORDER_DEPTH = 8
SEEK_RETRIES = 3  # earlier and earlier seeks (1 s, 2 s, 4 s before the keyframe) when one lands too late


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
class PlannedFrame:
    frame_index: int  # index of the frame in presentation order (0-based), counted over the whole stream
    timestamp_ms: float  # container timestamp relative to the first frame
    pts: int  # the stream pts (in stream time_base) used to seek/match while decoding; 0 for images
    keyframe_pts: int  # pts of the last keyframe at or before this frame (for the seek decision)
    # Timed by order: the stream has no timestamps, or ones that repeat or jump back (recordings joined end to
    # end); `pts` is then the frame's position in decoding output order, and decoding counts frames, never seeks.
    by_order: bool = False


@dataclass(frozen=True)
class StreamIndex:
    """What demuxing the video stream's packets tells, in presentation order."""

    frame_pts: list[int]
    keyframe_pts: list[int]  # sorted; discarded keyframes (before an edit list's start) included: seeks use them
    first_pts: int
    end_pts: Fraction  # the last frame's pts plus its duration, in stream time_base units
    time_base: Fraction
    by_order: bool = False  # frame_pts count frames in output order (see PlannedFrame.by_order)


def probe(path: Path, sample_fps: float) -> tuple[MediaInfo, list[PlannedFrame]]:
    """Identify the media, check limits, and plan which frames the sampling rule selects, in time order."""
    if not (sample_fps > 0 and math.isfinite(sample_fps)):
        raise ValueError(f"sample_fps must be a positive number, not {sample_fps}")
    size = _file_size(path)
    if size == 0:
        raise MediaError(EMPTY_MEDIA, "the file is 0 bytes")
    image = _open_pillow(path)
    if image is not None:
        with image:
            if _is_pillow_animation(image):
                return _probe_animation(image, sample_fps)
            width, height = image.size
            orientation = _exif_orientation(image)
        rotation = EXIF_ROTATION.get(orientation, 0)
        if rotation in (90, 270):
            width, height = height, width
        info = MediaInfo("image", width, height, None, 0.0, 1, rotation, orientation in EXIF_MIRRORED)
        return info, [PlannedFrame(0, 0.0, 0, 0)]
    with _open_container(path) as container:
        stream = _video_stream(container)
        _check_duration(_header_duration_s(container, stream))
        _check_pixels(stream.codec_context.width, stream.codec_context.height)
        index, first_frame = _index_stream(container, stream)
        fps = float(stream.average_rate) if stream.average_rate else None
        if index.by_order:
            fps = float(1 / index.time_base)  # the rate the frames are timed by
        pixel_aspect = _pixel_aspect(stream)
    if not index.frame_pts:
        raise MediaError(EMPTY_MEDIA, "the video stream has no frames")
    if first_frame is None:
        raise MediaError(DECODE_ERROR, f"none of the {len(index.frame_pts)} frames of the video stream could be "
                                       "decoded; the file is damaged or its codec is not supported")
    duration_s = (index.end_pts - index.first_pts) * index.time_base
    _check_duration(float(duration_s))
    _check_pixels(first_frame.width, first_frame.height)
    display = _Display.of(first_frame, pixel_aspect)
    width, height = display.size(first_frame.width, first_frame.height)
    info = MediaInfo("video", width, height, fps, float(duration_s * 1000), len(index.frame_pts),
                     display.clockwise_rotation, display.mirrored)
    # The decimal the caller wrote (29.97, not its binary neighbour), so ticks on frame times are exact.
    return info, _plan(index, duration_s, Fraction(repr(float(sample_fps))))


def split_plan(plan: list[PlannedFrame], segment_ms: float) -> list[list[PlannedFrame]]:
    """Consecutive time ranges of about segment_ms each (by timestamp_ms); never an empty segment; one segment
    for short media and for a plan timed by order. Every planned frame is in exactly one segment, order kept."""
    if not segment_ms > 0:
        raise ValueError(f"segment_ms must be > 0, not {segment_ms}")
    if plan and plan[0].by_order:
        return [plan]  # decoding by order starts at the first frame: each later segment would decode all before it
    segments: list[list[PlannedFrame]] = []
    current_slot = None
    for frame in plan:
        slot = math.floor((frame.timestamp_ms - plan[0].timestamp_ms) / segment_ms)
        if slot != current_slot:
            segments.append([])
            current_slot = slot
        segments[-1].append(frame)
    return segments


def decode_planned(path: Path, plan: list[PlannedFrame],
                   warnings: list[str]) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
    """Decode only what the plan needs and yield (planned frame, upright BGR image) in plan order.
    Frames that cannot be decoded are skipped and described once in `warnings` (appended, human-readable)."""
    if not plan:
        return
    _file_size(path)
    image = _open_pillow(path)
    if image is not None:
        with image:
            if not _is_pillow_animation(image):
                yield plan[0], _decode_still(image)
                return
            for planned in plan:  # in order: Pillow decodes onwards from the frame it is on
                image.seek(planned.frame_index)
                yield planned, np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
        return
    yield from _decode_video(path, plan, warnings)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise MediaError(SOURCE_UNAVAILABLE, f"cannot read {path.name}: {error.strerror or error}") from error


def _pixel_limit_error(width: int, height: int, limit: int) -> MediaError:
    return MediaError(MEDIA_TOO_LARGE, f"frames of {width}x{height} pixels exceed the {limit}-pixel limit "
                                       "(FERVID_MAX_PIXELS)")


def _check_pixels(width: int, height: int) -> None:
    limit = get_settings().max_pixels
    if width * height > limit:
        raise _pixel_limit_error(width, height, limit)


def _check_duration(duration_s: float | None) -> None:
    limit = get_settings().max_duration_s
    if duration_s is not None and duration_s > limit:
        raise MediaError(MEDIA_TOO_LARGE, f"the video lasts {duration_s:.1f} s, over the {limit:g}-second limit "
                                          "(FERVID_MAX_DURATION_S)")


# --- stills (Pillow) -------------------------------------------------------------------------------------------

def _open_pillow(path: Path) -> Image.Image | None:
    """The file opened lazily (header read, no pixels) when Pillow is the one to decode it: a single still image,
    or an animation FFmpeg cannot decode (`_is_pillow_animation`); None for the rest.

    Other animated and multi-frame images, and MPEG streams Pillow can only identify, go to PyAV as video."""
    limit = get_settings().max_pixels
    Image.MAX_IMAGE_PIXELS = limit  # Pillow refuses past twice this; our own check below covers the rest
    try:
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise MediaError(MEDIA_TOO_LARGE, f"the image declares a size far over the {limit}-pixel limit "
                                          "(FERVID_MAX_PIXELS); it was refused before decoding") from error
    except UnidentifiedImageError:
        return None
    except PIL_ERRORS:
        return None  # not readable as an image: PyAV gets its turn and names the problem
    # MPO (phone JPEGs carrying a gain map or depth image) is a photo: Pillow reads its primary image.
    for_ffmpeg = getattr(image, "is_animated", False) and image.format != "MPO" and not _is_pillow_animation(image)
    if for_ffmpeg or image.format == "MPEG":
        image.close()
        return None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise _pixel_limit_error(width, height, limit)
    return image


def _is_pillow_animation(image: Image.Image) -> bool:
    return image.format in PILLOW_ONLY_ANIMATIONS and bool(getattr(image, "is_animated", False))


def _probe_animation(image: Image.Image, sample_fps: float) -> tuple[MediaInfo, list[PlannedFrame]]:
    width, height = image.size  # within the pixel limit: `_open_pillow` checked it
    count = int(getattr(image, "n_frames", 1))
    if count > get_settings().max_frames:
        raise MediaError(MEDIA_TOO_LARGE, f"the animation has {count} frames, over FERVID_MAX_FRAMES")
    starts_ms: list[int] = []
    elapsed_ms = 0
    try:
        for frame in range(count):
            image.seek(frame)
            image.load()  # some plugins (WebP) set a frame's duration only when they decode it
            starts_ms.append(elapsed_ms)
            elapsed_ms += int(image.info.get("duration") or 0) or DEFAULT_ANIMATION_FRAME_MS
    except PIL_ERRORS as error:
        raise MediaError(DECODE_ERROR, f"the animation could not be decoded ({error}); the file is damaged") from error
    duration_s = Fraction(elapsed_ms, 1000)
    _check_duration(float(duration_s))
    timing = StreamIndex(starts_ms, starts_ms, 0, Fraction(elapsed_ms), Fraction(1, 1000))  # every frame is whole
    info = MediaInfo("video", width, height, float(count / duration_s), float(elapsed_ms), count, 0)
    return info, _plan(timing, duration_s, Fraction(repr(float(sample_fps))))


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except PIL_ERRORS:
        return 1  # unreadable EXIF: show the pixels as stored


def _decode_still(image: Image.Image) -> NDArray[np.uint8]:
    try:
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            upright = ImageOps.exif_transpose(image)
            if upright.mode.startswith("I;16"):
                # Pillow's convert() clips 16-bit grey at 255 (a white frame); keep the high byte instead.
                upright = Image.fromarray((np.asarray(upright, dtype=np.uint16) >> 8).astype(np.uint8))
            upright = upright.convert("RGB")
    except PIL_ERRORS as error:
        raise MediaError(DECODE_ERROR, f"the image could not be decoded ({error}); the file is damaged or "
                                       "truncated") from error
    return np.ascontiguousarray(np.asarray(upright, dtype=np.uint8)[:, :, ::-1])  # RGB -> BGR


# --- video (PyAV) ----------------------------------------------------------------------------------------------

def _looks_like_container(head: bytes) -> bool:
    if head.startswith(CONTAINER_SIGNATURES) or head[4:8] in ISO_BOX_TYPES:
        return True
    return len(head) > 2 * TS_PACKET and all(head[i] == 0x47 for i in (0, TS_PACKET, 2 * TS_PACKET))


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        with path.open("rb") as file:
            head = file.read(3 * TS_PACKET + 1)
        if _looks_like_container(head):
            raise MediaError(DECODE_ERROR, "the file looks like a video container but cannot be read; it is "
                                           "probably truncated or damaged") from error
        raise MediaError(UNSUPPORTED_MEDIA, "the file is not a video or image format that can be read") from error


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    # Cover art in audio files is a one-picture "video" stream; it is not a video.
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        raise MediaError(UNSUPPORTED_MEDIA, "the file has no video stream (audio only, or another kind of data)")
    stream = max(videos, key=lambda s: bool(s.disposition & av.stream.Disposition.default))
    if stream.codec_context is None:
        raise MediaError(UNSUPPORTED_MEDIA, f"this file ({container.format.name}) holds pictures in a format with no "
                                            "decoder available (vector images such as SVG are not supported)")
    # The decoder refuses frames past the limit even where the container header understates them.
    stream.codec_context.options = {"max_pixels": str(get_settings().max_pixels)}
    return stream


def _header_duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    """The stream's packets; a damaged or truncated tail ends the iteration instead of raising."""
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            return
        except (av.error.FFmpegError, OSError):
            yield av.Packet()  # empty: drains the frames the decoder still holds
            return
        yield packet


def _decoded(packet: av.Packet, stream: av.video.stream.VideoStream) -> list[av.VideoFrame]:
    try:
        return stream.decode(packet)
    except (av.error.FFmpegError, OSError):
        return []  # a damaged packet: its frames are missing, the caller counts them


def _index_stream(container: av.container.InputContainer,
                  stream: av.video.stream.VideoStream) -> tuple[StreamIndex, av.VideoFrame | None]:
    """Demuxes every packet of the stream (decoding only until the first frame comes out)."""
    durations: dict[int, int] = {}
    keyframes: list[int] = []
    untimed = timed = 0
    last_dts: int | None = None
    dts_went_back = False
    first_frame: av.VideoFrame | None = None
    max_frames = get_settings().max_frames
    for count, packet in enumerate(_packets(container, stream), start=1):
        if count > max_frames:  # the header can understate: counted before the index outgrows memory
            raise MediaError(MEDIA_TOO_LARGE, f"the video has over {max_frames} frames (FERVID_MAX_FRAMES)")
        if first_frame is None:
            frames = _decoded(packet, stream)
            first_frame = frames[0] if frames else None
        timestamp = packet.pts if packet.pts is not None else packet.dts
        if not packet.size:
            continue
        if timestamp is None:
            untimed += 1
            continue
        if packet.dts is not None:
            dts_went_back |= last_dts is not None and packet.dts < last_dts
            last_dts = packet.dts
        if packet.is_keyframe:
            keyframes.append(timestamp)
        if not packet.is_discard:
            durations[timestamp] = packet.duration or 0
            timed += 1
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1)
    frame_interval = 1 / (Fraction(stream.average_rate) * time_base) if stream.average_rate else Fraction(0)
    if not durations and untimed:
        return _order_index(untimed, frame_interval * time_base), first_frame
    if dts_went_back or timed > len(durations):
        # Timestamps that repeat or run backwards cannot place frames in time: joined recordings each restart
        # theirs, and sorting would interleave them (or collapse equal ones). Play them in order instead.
        log.info("timestamps repeat or run backwards: frames are timed by their order")
        return _order_index(timed + untimed, _typical_interval(durations, frame_interval) * time_base), first_frame
    frame_pts = sorted(durations)
    if not frame_pts:
        return StreamIndex([], [], 0, Fraction(0), time_base), first_frame
    keyframes.sort()
    last = frame_pts[-1]
    end = last + (durations[last] or frame_interval)
    return StreamIndex(frame_pts, keyframes, frame_pts[0], Fraction(end), time_base), first_frame


def _order_index(frame_count: int, frame_seconds: Fraction) -> StreamIndex:
    """Frames counted in order and timed one frame interval apart: for raw streams, which carry no timestamps,
    and for streams whose timestamps cannot be trusted."""
    if not frame_seconds > 0:
        raise MediaError(DECODE_ERROR, "the video stream has neither usable timestamps nor a frame rate")
    return StreamIndex(list(range(frame_count)), [0], 0, Fraction(frame_count), frame_seconds, by_order=True)


def _typical_interval(durations: dict[int, int], frame_interval: Fraction) -> Fraction:
    """The frame interval in time_base units: the stream's average rate, else its most common packet duration."""
    if frame_interval:
        return frame_interval
    counts: dict[int, int] = {}
    for duration in durations.values():
        if duration > 0:
            counts[duration] = counts.get(duration, 0) + 1
    return Fraction(max(counts, key=lambda duration: counts[duration])) if counts else Fraction(0)


def _plan(index: StreamIndex, duration_s: Fraction, sample_fps: Fraction) -> list[PlannedFrame]:
    """For k = 0, 1, ... while k/F < duration: the first frame at or after k/F seconds, each frame once."""
    plan: list[PlannedFrame] = []
    k = 0
    while k == 0 or k / sample_fps < duration_s:
        # Exact in integers: time >= k/F  <=>  pts >= first_pts + k/F / time_base.
        position = bisect.bisect_left(index.frame_pts, math.ceil(index.first_pts + k / sample_fps / index.time_base))
        if position == len(index.frame_pts):
            break
        pts = index.frame_pts[position]
        time_s = (pts - index.first_pts) * index.time_base
        plan.append(PlannedFrame(position, float(time_s * 1000), pts, _keyframe_before(index, pts), index.by_order))
        # Every k up to the selected frame's time selects it again: jump to the first k past it.
        k = math.floor(time_s * sample_fps) + 1
    return plan


def _keyframe_before(index: StreamIndex, pts: int) -> int:
    position = bisect.bisect_right(index.keyframe_pts, pts)
    return index.keyframe_pts[position - 1] if position else index.first_pts  # no keyframe flags: from the start


def _pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """Width of one coded pixel over its height as displayed (the container's value first, as players do)."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio and PIXEL_ASPECT_RANGE[0] <= ratio <= PIXEL_ASPECT_RANGE[1]:
            return Fraction(ratio)
    return Fraction(1)


@dataclass(frozen=True)
class _Display:
    """How a decoded frame becomes what a viewer sees: one field of an interlaced frame, non-square pixels made
    square, then the display matrix applied as an exact quarter-turn and/or mirror (phones store frames sideways;
    some cameras store them mirrored). Other angles are rounded to the nearest quarter-turn."""

    pixel_aspect: Fraction
    swap_axes: bool  # displayed rows are coded columns
    flip_rows: bool  # then top and bottom exchanged
    flip_cols: bool  # then left and right exchanged

    @classmethod
    def of(cls, frame: av.VideoFrame, pixel_aspect: Fraction) -> _Display:
        # FFmpeg's 3x3 matrix maps a coded point (p, q) to the displayed p' = a*p + c*q, q' = b*p + d*q (rows
        # grow downwards); only the signs of the linear part matter for a quarter-turn or a mirror.
        a, b, c, d = _display_matrix(frame)
        if abs(a) + abs(d) >= abs(b) + abs(c):
            return cls(pixel_aspect, False, d < 0, a < 0)
        return cls(pixel_aspect, True, b < 0, c < 0)

    @property
    def mirrored(self) -> bool:
        # A swap of axes mirrors; each flip mirrors again.
        return (self.swap_axes + self.flip_rows + self.flip_cols) % 2 == 1

    @property
    def clockwise_rotation(self) -> int:
        """Degrees clockwise the viewer turns the frame, after mirroring it left-right when `mirrored`."""
        if not self.swap_axes:
            return 180 if self.flip_rows else 0
        return 90 if self.flip_cols else 270

    def size(self, coded_width: int, coded_height: int) -> tuple[int, int]:
        width, height = self._square_size(coded_width, coded_height)
        return (height, width) if self.swap_axes else (width, height)

    def _square_size(self, width: int, height: int) -> tuple[int, int]:
        # Stretch the short side of a pixel rather than squeeze the long one: no detail is thrown away.
        if self.pixel_aspect > 1:
            return round(width * self.pixel_aspect), height
        if self.pixel_aspect < 1:
            return width, round(height / self.pixel_aspect)
        return width, height

    def image(self, frame: av.VideoFrame) -> NDArray[np.uint8]:
        image = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
        if frame.interlaced_frame:
            # The two fields are two moments: every moving edge is combed. One field, stretched back, is one.
            image = image[0::2]
        size = self._square_size(frame.width, frame.height)
        if image.shape[1::-1] != size:
            image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
        if self.swap_axes:
            image = image.transpose(1, 0, 2)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


def _display_matrix(frame: av.VideoFrame) -> tuple[float, float, float, float]:
    """The linear part (a, b, c, d) of the frame's display matrix; the identity when it has none."""
    try:
        side_data = cast(SideDataContainer, frame.side_data)  # PyAV's stub types it as a dict
        matrix = next((bytes(item) for item in side_data if item.type == SideDataType.DISPLAYMATRIX), None)
    except ValueError:
        # Side data of a kind newer than this PyAV (HEIF item properties, ...) makes the list unreadable; the
        # angle still is, only a mirror is lost. PyAV's angle is counter-clockwise, as FFmpeg builds it.
        angle = math.radians(frame.rotation)
        return math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    if matrix is None:
        return 1.0, 0.0, 0.0, 1.0
    a, b, _, c, d = struct.unpack("=9i", matrix)[:5]
    return a, b, c, d


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


def _decode_video(path: Path, plan: list[PlannedFrame],
                  warnings: list[str]) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
    """Decodes sequentially, seeking to a planned frame's keyframe only when it lies past what was decoded;
    converts only the frames the plan takes."""
    cursor = _PlanCursor(plan)
    held: list[tuple[int, int, av.VideoFrame]] = []  # a heap by pts: (pts, arrival, frame)

    def release(keep: int) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
        while len(held) > keep:
            pts, _, frame = heapq.heappop(held)
            planned = cursor.match(pts)
            if planned is not None:
                yield planned, _Display.of(frame, pixel_aspect).image(frame)

    with _open_container(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        _check_pixels(stream.codec_context.width, stream.codec_context.height)
        pixel_aspect = _pixel_aspect(stream)
        reached = stream.start_time if stream.start_time is not None else plan[0].keyframe_pts
        one_second = max(1, round(1 / stream.time_base)) if stream.time_base else 1
        last_pts = -1
        arrivals = 0
        by_order = plan[0].by_order
        retimed = False  # by order although the frames carry timestamps: those were not usable
        can_seek = not by_order
        seek_to: int | None = None
        retries = 0
        awaiting_first = False
        packets = _packets(container, stream)
        while not cursor.done:
            if seek_to is None and can_seek and cursor.current.keyframe_pts > reached:
                yield from release(0)
                if cursor.done:
                    break
                if cursor.current.keyframe_pts > reached:
                    seek_to, retries = cursor.current.keyframe_pts, 0
            if seek_to is not None:
                can_seek = awaiting_first = _seek(container, stream, seek_to)
                reached, seek_to = max(reached, cursor.current.keyframe_pts), None
                packets = _packets(container, stream)
            packet = next(packets, None)
            # Containers without a keyframe index (MPEG-TS, ...) can land past the keyframe: seek earlier.
            if packet is None and awaiting_first and retries < SEEK_RETRIES:
                seek_to, retries = cursor.current.keyframe_pts - one_second * 2 ** retries, retries + 1
                continue
            if packet is None:
                break
            for frame in _decoded(packet, stream):
                retimed |= by_order and frame.pts is not None
                last_pts = last_pts + 1 if by_order or frame.pts is None else frame.pts
                if awaiting_first and last_pts > cursor.current.pts and retries < SEEK_RETRIES:
                    seek_to, retries = cursor.current.keyframe_pts - one_second * 2 ** retries, retries + 1
                    break
                awaiting_first = False
                reached = max(reached, last_pts)
                if last_pts >= cursor.current.pts:
                    heapq.heappush(held, (last_pts, arrivals, frame))
                    arrivals += 1
            yield from release(REORDER_DEPTH)
        yield from release(0)
    if by_order and retimed:
        warnings.append("the video's timestamps repeat or run backwards (recordings joined end to end?); its frames "
                        "are timed by their order at the stream's frame rate")
    if cursor.matched < len(plan):
        warnings.append(f"{len(plan) - cursor.matched} of {len(plan)} sampled frames could not be decoded (damaged "
                        "or truncated data) and were skipped")


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: int) -> bool:
    """Seeks to the keyframe at or before pts; False when the container cannot seek."""
    log.debug("seek to pts %d", pts)
    try:
        container.seek(pts, stream=stream, backward=True)
    except (av.error.FFmpegError, OSError):
        return False
    return True
