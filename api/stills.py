"""One sampled frame as a JPEG, decoded from the stored media: the viewer's fallback for media a browser cannot play.

PyAV and Pillow come with the `viewer` extra (the API image installs it) and are imported only here, on first use,
so the base install stays free of media decoding. The frame is turned upright as the worker sees it (rotation and
non-square pixels), so the timeline's boxes fall where they belong.
"""

from __future__ import annotations

import io
import threading
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from fervid.errors import DECODE_ERROR, NOT_CONFIGURED, FervidError, MediaError, TooManyRequests
from fervid.pixels import rgb_image
from fervid.tables import PlanRow

if TYPE_CHECKING:
    from PIL.Image import Image

JPEG_QUALITY = 85
MAX_FRAMES_AFTER_SEEK = 5000  # a sane bound on decoding from a keyframe to the sampled frame
# Stills are decoded in the API process, each up to the pixel limit the worker's probe held the media to (a frame of
# 40 MP takes hundreds of MB): at most this many at once, so that many requests for large frames cannot together
# take the process's memory; a request that waits longer than WAIT_FOR_DECODE_S is answered 429.
CONCURRENT_DECODES = 2
WAIT_FOR_DECODE_S = 10.0
_decoding = threading.BoundedSemaphore(CONCURRENT_DECODES)


def frame_jpeg(path: Path, media_kind: str | None, planned: PlanRow) -> bytes:
    """The sampled frame `planned` of the media at `path`, upright, as JPEG bytes."""
    if not _decoding.acquire(timeout=WAIT_FOR_DECODE_S):
        raise TooManyRequests(f"the API is decoding {CONCURRENT_DECODES} frame stills already; retry in a moment",
                              retry_after_s=1)
    try:
        return _decoded_jpeg(path, media_kind, planned)
    finally:
        _decoding.release()


def _decoded_jpeg(path: Path, media_kind: str | None, planned: PlanRow) -> bytes:
    try:
        from PIL import Image, ImageOps
    except ImportError as error:
        raise _viewer_extra_missing() from error
    if media_kind == "image":
        try:
            with Image.open(path) as image:
                upright = rgb_image(ImageOps.exif_transpose(image))  # as the worker saw it
        except (OSError, ValueError) as error:
            raise MediaError(DECODE_ERROR, f"the image cannot be decoded here ({error})") from error
    else:
        upright = _video_frame(path, planned)
    buffer = io.BytesIO()
    upright.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _viewer_extra_missing() -> FervidError:
    return FervidError("frame stills need PyAV and Pillow on the API: install it with the `viewer` extra",
                       code=NOT_CONFIGURED, http_status=501)


def _video_frame(path: Path, planned: PlanRow) -> Image:
    try:
        import av
        import av.error
    except ImportError as error:
        raise _viewer_extra_missing() from error
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if not planned.by_order:  # timed by order: count frames from the start, as the worker did
                container.seek(planned.keyframe_pts, stream=stream, backward=True)
            for position, frame in enumerate(container.decode(stream)):
                if planned.by_order:
                    reached = position == planned.pts
                else:
                    reached = frame.pts is not None and frame.pts >= planned.pts
                if reached:
                    return _upright(frame.to_image(), frame.rotation, _pixel_aspect(stream))
                if not planned.by_order and position > MAX_FRAMES_AFTER_SEEK:
                    break
    except (av.error.FFmpegError, OSError, IndexError) as error:
        raise MediaError(DECODE_ERROR, f"the sampled frame cannot be decoded here ({error})") from error
    raise MediaError(DECODE_ERROR, f"frame {planned.frame_index} was not found in the media")


def _pixel_aspect(stream: object) -> Fraction:
    ratio = getattr(stream, "sample_aspect_ratio", None)
    return Fraction(ratio) if ratio and Fraction(1, 8) <= ratio <= 8 else Fraction(1)


def _upright(image: Image, counter_clockwise_degrees: float, pixel_aspect: Fraction) -> Image:
    """Square pixels (stretching the short side, as the worker does), then the display rotation."""
    width, height = image.size
    if pixel_aspect > 1:
        image = image.resize((round(width * pixel_aspect), height))
    elif pixel_aspect < 1:
        image = image.resize((width, round(height / pixel_aspect)))
    quarter_turns = round(counter_clockwise_degrees / 90) % 4
    return image.rotate(90 * quarter_turns, expand=True) if quarter_turns else image
