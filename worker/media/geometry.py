"""Display geometry: how a decoded frame becomes what a viewer sees (fields, pixel aspect, rotation, mirror)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from numpy.typing import NDArray

# Non-square pixels past these ratios are treated as a damaged header, not as anamorphic video.
PIXEL_ASPECT_RANGE = (Fraction(1, 8), Fraction(8))


def pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """Width of one coded pixel over its height as displayed (the container's value first, as players do)."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio and PIXEL_ASPECT_RANGE[0] <= ratio <= PIXEL_ASPECT_RANGE[1]:
            return Fraction(ratio)
    return Fraction(1)


@dataclass(frozen=True)
class Display:
    """How a decoded frame becomes what a viewer sees: one field of an interlaced frame, non-square pixels made
    square, then the display matrix applied as an exact quarter-turn and/or mirror (phones store frames sideways;
    some cameras store them mirrored). Other angles are rounded to the nearest quarter-turn."""

    pixel_aspect: Fraction
    swap_axes: bool  # displayed rows are coded columns
    flip_rows: bool  # then top and bottom exchanged
    flip_cols: bool  # then left and right exchanged

    @classmethod
    def of(cls, frame: av.VideoFrame, pixel_aspect: Fraction) -> Display:
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
        # Built here rather than read as frame.side_data, which the frame keeps: that cycle holds every frame (its
        # pixels, its converter's threads) until the garbage collector runs, hundreds of frames later.
        side_data = SideDataContainer(frame)  # type: ignore[call-arg]  # PyAV's stub leaves out its constructor
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
