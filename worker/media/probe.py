"""The probe: identify the media, check its limits, and plan the frames the sampling rule selects."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

from PIL import Image

from fervid.errors import DECODE_ERROR, EMPTY_MEDIA, MediaError
from fervid.sampling import PlannedFrame
from worker.media.exif import EXIF_MIRRORED, EXIF_ROTATION, exif_orientation
from worker.media.geometry import Display, pixel_aspect
from worker.media.index import header_duration_s, index_stream, video_stream
from worker.media.limits import MediaLimits, check_decoded_pixels, check_duration, check_pixels, file_size
from worker.media.plan import MediaInfo, plan_frames
from worker.media.sniff import open_container
from worker.media.stills import is_pillow_animation, open_pillow, probe_animation


def probe(path: Path, sample_fps: float, limits: MediaLimits) -> tuple[MediaInfo, list[PlannedFrame]]:
    """Identify the media, check limits, and plan which frames the sampling rule selects, in time order."""
    if not (sample_fps > 0 and math.isfinite(sample_fps)):
        raise ValueError(f"sample_fps must be a positive number, not {sample_fps}")
    if file_size(path) == 0:
        raise MediaError(EMPTY_MEDIA, "the file is 0 bytes")
    image = open_pillow(path, limits.max_pixels)
    if image is not None:
        with image:
            if is_pillow_animation(image):
                return probe_animation(image, sample_fps, limits)
            return _probe_still(image)
    return _probe_video(path, sample_fps, limits)


def _probe_still(image: Image.Image) -> tuple[MediaInfo, list[PlannedFrame]]:
    width, height = image.size
    orientation = exif_orientation(image)
    rotation = EXIF_ROTATION.get(orientation, 0)
    if rotation in (90, 270):
        width, height = height, width
    info = MediaInfo("image", width, height, None, 0.0, 1, rotation, orientation in EXIF_MIRRORED)
    return info, [PlannedFrame(frame_index=0, timestamp_ms=0.0, pts=0, keyframe_pts=0)]


def _probe_video(path: Path, sample_fps: float, limits: MediaLimits) -> tuple[MediaInfo, list[PlannedFrame]]:
    with open_container(path) as container:
        stream = video_stream(container, limits.max_pixels)
        check_duration(header_duration_s(container, stream), limits.max_duration_s)
        check_pixels(stream.codec_context.width, stream.codec_context.height, limits.max_pixels)
        index, first_frame = index_stream(container, stream, limits.max_frames)
        fps = float(stream.average_rate) if stream.average_rate else None
        if index.by_order:
            fps = float(1 / index.time_base)  # the rate the frames are timed by
        aspect = pixel_aspect(stream)
    if not index.frame_pts:
        raise MediaError(EMPTY_MEDIA, "the video stream has no frames")
    if first_frame is None:
        raise MediaError(DECODE_ERROR, f"none of the {len(index.frame_pts)} frames of the video stream could be "
                                       "decoded; the file is damaged or its codec is not supported")
    duration_s: Fraction = (index.end_pts - index.first_pts) * index.time_base
    check_duration(float(duration_s), limits.max_duration_s)
    check_pixels(first_frame.width, first_frame.height, limits.max_pixels)
    check_decoded_pixels(len(index.frame_pts), first_frame.width, first_frame.height, limits.max_decoded_pixels)
    display = Display.of(first_frame, aspect)
    width, height = display.size(first_frame.width, first_frame.height)
    info = MediaInfo("video", width, height, fps, float(duration_s * 1000), len(index.frame_pts),
                     display.clockwise_rotation, display.mirrored)
    return info, plan_frames(index, duration_s, sample_fps)
