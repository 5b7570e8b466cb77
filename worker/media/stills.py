"""Pillow's share: single still images (HEIC included), and the animations FFmpeg cannot decode (WebP)."""

from __future__ import annotations

import mmap
import warnings as py_warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pi_heif import register_heif_opener
from PIL import Image, ImageOps, UnidentifiedImageError

from fervid.errors import DECODE_ERROR, MEDIA_TOO_LARGE, MediaError
from fervid.pixels import rgb_image
from fervid.sampling import PlannedFrame
from worker.media.limits import MediaLimits, check_decoded_pixels, check_duration, pixel_limit_error
from worker.media.plan import MediaInfo, StreamIndex, plan_frames

# HEIC/HEIF photos (phones' default) open as stills: libheif assembles the tile grid phones write and applies
# the rotation and mirror properties; FFmpeg would see one tile as a one-frame video.
register_heif_opener()

# Errors Pillow raises for a damaged image, besides OSError.
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
# Animated formats FFmpeg cannot decode: Pillow reads their frames and per-frame durations instead.
PILLOW_ONLY_ANIMATIONS = frozenset({"WEBP"})
# Multi-frame formats that hold one photo: MPO (phone JPEGs carrying a gain map or depth image) and TIFF (later pages
# are thumbnails, or further scans): Pillow reads the primary image, the first page.
PHOTO_FORMATS = frozenset({"MPO", "TIFF"})
# Decoding a progressive JPEG passes over every pixel once per scan: a file of a few KB repeating one scan thousands
# of times takes minutes. libjpeg writes 10 scans for a colour image, 6 for a grey one.
MAX_JPEG_SCANS = 100
DEFAULT_ANIMATION_FRAME_MS = 100  # what browsers show a frame that declares no duration for


def open_pillow(path: Path, max_pixels: int) -> Image.Image | None:
    """The file opened lazily (header read, no pixels) when Pillow is the one to decode it: a single still image,
    or an animation FFmpeg cannot decode (`is_pillow_animation`); None for the rest.

    Other animated and multi-frame images, and MPEG streams Pillow can only identify, go to PyAV as video."""
    limit = max_pixels
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
    for_ffmpeg = (image.format not in PHOTO_FORMATS and getattr(image, "is_animated", False)
                  and not is_pillow_animation(image))
    if for_ffmpeg or image.format == "MPEG":
        image.close()
        return None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise pixel_limit_error(width, height, limit)
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        scans = jpeg_scans(path, MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            image.close()
            raise MediaError(MEDIA_TOO_LARGE, f"the progressive JPEG has over {MAX_JPEG_SCANS} scans, each a pass "
                                              "over every pixel; it was refused before decoding (save it again as "
                                              "a standard JPEG)")
    return image


SOS, EOI = 0xDA, 0xD9
STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length follows


def jpeg_scans(path: Path, stop_past: int) -> int:
    """The scans (SOS markers) of the JPEG's first image, counted up to `stop_past` + 1 by walking its marker
    segments and skipping each scan's entropy-coded data (where 0xFF is followed by 0x00 or a restart marker)."""
    scans = 0
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = 2  # past SOI
        while position + 4 <= len(data) and data[position] == 0xFF and scans <= stop_past:
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker == EOI:
                break
            if marker in STANDALONE_MARKERS:
                position += 2
                continue
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
            if marker == SOS:
                scans += 1
                position = _end_of_scan(data, position)
    return scans


def _end_of_scan(data: mmap.mmap, position: int) -> int:
    while (position := data.find(b"\xff", position)) >= 0 and position + 1 < len(data):
        following = data[position + 1]
        if following != 0 and not 0xD0 <= following <= 0xD7:
            return position
        position += 2
    return len(data)


def is_pillow_animation(image: Image.Image) -> bool:
    return image.format in PILLOW_ONLY_ANIMATIONS and bool(getattr(image, "is_animated", False))


def probe_animation(image: Image.Image, sample_fps: float, limits: MediaLimits) -> tuple[MediaInfo, list[PlannedFrame]]:
    width, height = image.size  # within the pixel limit: `open_pillow` checked it
    count = int(getattr(image, "n_frames", 1))
    if count > limits.max_frames:
        raise MediaError(MEDIA_TOO_LARGE, f"the animation has {count} frames, over FERVID_MAX_FRAMES")
    # Reading the frames' durations decodes every frame, so the budget is checked first.
    check_decoded_pixels(count, width, height, limits.max_decoded_pixels)
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
    check_duration(float(duration_s), limits.max_duration_s)
    timing = StreamIndex(starts_ms, starts_ms, 0, Fraction(elapsed_ms), Fraction(1, 1000))  # every frame is whole
    info = MediaInfo("video", width, height, float(count / duration_s), float(elapsed_ms), count, 0)
    return info, plan_frames(timing, duration_s, sample_fps)


def decode_still(image: Image.Image) -> NDArray[np.uint8]:
    try:
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            upright = rgb_image(ImageOps.exif_transpose(image))
    except PIL_ERRORS as error:
        raise MediaError(DECODE_ERROR, f"the image could not be decoded ({error}); the file is damaged or "
                                       "truncated") from error
    return np.ascontiguousarray(np.asarray(upright, dtype=np.uint8)[:, :, ::-1])  # RGB -> BGR


def decode_animation(image: Image.Image,
                     plan: list[PlannedFrame]) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
    for planned in plan:  # in order: Pillow decodes onwards from the frame it is on
        image.seek(planned.frame_index)
        yield planned, np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
