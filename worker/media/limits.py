"""The limits every probe and decode checks: a readable file, and frames, durations within the configured bounds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fervid.errors import MEDIA_TOO_LARGE, SOURCE_UNAVAILABLE, MediaError

if TYPE_CHECKING:  # the decoder process starts without pydantic
    from fervid.settings import Settings


@dataclass(frozen=True)
class MediaLimits:
    """What a probe or decode refuses: built from the settings at the edge and passed down."""

    max_pixels: int  # per decoded frame (FERVID_MAX_PIXELS)
    max_duration_s: float  # FERVID_MAX_DURATION_S
    max_frames: int  # video frames (packets) in one file (FERVID_MAX_FRAMES)
    max_decoded_pixels: int  # frames x pixels per frame of one file (FERVID_MAX_DECODED_PIXELS)

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(settings.max_pixels, settings.max_duration_s, settings.max_frames, settings.max_decoded_pixels)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise MediaError(SOURCE_UNAVAILABLE, f"cannot read {path.name}: {error.strerror or error}") from error


def pixel_limit_error(width: int, height: int, limit: int) -> MediaError:
    return MediaError(MEDIA_TOO_LARGE, f"frames of {width}x{height} pixels exceed the {limit}-pixel limit "
                                       "(FERVID_MAX_PIXELS)")


def check_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise pixel_limit_error(width, height, limit)


def check_duration(duration_s: float | None, limit: float) -> None:
    if duration_s is not None and duration_s > limit:
        raise MediaError(MEDIA_TOO_LARGE, f"the video lasts {duration_s:.1f} s, over the {limit:g}-second limit "
                                          "(FERVID_MAX_DURATION_S)")


def check_decoded_pixels(frames: int, width: int, height: int, limit: int) -> None:
    """Refuses media whose frames, all decoded, exceed the job's budget: checked before the first is decoded."""
    if frames * width * height > limit:
        raise MediaError(MEDIA_TOO_LARGE, f"{frames} frames of {width}x{height} pixels exceed the budget of {limit} "
                                          "decoded pixels per job (FERVID_MAX_DECODED_PIXELS)")
