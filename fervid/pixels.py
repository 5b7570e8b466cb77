"""Grey pixels deeper than 8 bits (16-bit PNG and TIFF, 32-bit integer or float TIFF) as the 8 bits the classifier,
the detector and a JPEG take. Pillow's convert("RGB") clips them instead: a 16-bit frame turns white, a float one in
[0, 1] black. The worker and the viewer's stills both read images through this, so both see the same picture."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from PIL.Image import Image

DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # Pillow's modes for them


def rgb_image(image: Image) -> Image:
    """`image` in RGB, deep grey scaled rather than clipped (Pillow comes with whatever calls this: the worker, or
    the API's `viewer` extra; the base install needs none)."""
    if image.mode in DEEP_GREY_MODES:
        from PIL import Image as PilImage

        image = PilImage.fromarray(deep_grey_as_8bit(np.asarray(image), image.mode))
    return image.convert("RGB")


def deep_grey_as_8bit(pixels: NDArray[np.generic], mode: str) -> NDArray[np.uint8]:
    """`pixels` of a Pillow image in `mode` (one of DEEP_GREY_MODES) scaled to 0-255.

    A 16-bit mode says its range: its top 8 bits are kept. 32-bit integers and floats do not, so the range is read
    from the values: floats no brighter than 1.0 are taken as 0-1 (the common float convention), values no brighter
    than 255 as 8-bit already, no brighter than 65535 as 16-bit, and anything brighter as running to its own peak.
    Negative values and NaN are black."""
    if mode.startswith("I;16"):
        return (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    values = np.nan_to_num(pixels.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max()) if values.size else 0.0
    if mode == "F" and peak <= 1.0:
        full = 1.0
    elif peak <= 255.0:
        full = 255.0
    elif peak <= 65535.0:
        full = 65535.0
    else:
        full = peak
    values *= 255.0 / full
    return np.clip(values, 0.0, 255.0, out=values).round().astype(np.uint8)
