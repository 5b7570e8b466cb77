"""What makes a face readable, measured on every face a job analyses: its sharpness and its head pose.

Both are measured the same way on FER-2013's faces by `bench/face_quality.py`, which chose the thresholds a face must
meet to be `reliable` (fervid/quality.py) from the classifier's accuracy against each.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

# Sharpness is measured on the face at FER-2013's own size, so that it means the same for a face of 30 px and of
# 300 px: what the classifier gets is this much detail, whatever the face's size in the frame.
SHARPNESS_SIZE = 48


def sharpness(crop: NDArray[np.uint8]) -> float:
    """The variance of the Laplacian of the face (BGR or grey) resized to 48x48 grey: high for crisp edges, near 0
    for a blurred face."""
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    if grey.shape[:2] != (SHARPNESS_SIZE, SHARPNESS_SIZE):
        interpolation = cv2.INTER_AREA if grey.shape[0] > SHARPNESS_SIZE else cv2.INTER_LINEAR
        grey = cv2.resize(grey, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=interpolation)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def head_pose(landmarks: tuple[float, ...]) -> tuple[float, float]:
    """(yaw, roll) in degrees from YuNet's five landmarks (eye, eye, nose tip, mouth corner, mouth corner; x, y
    each, in the frame). Roll is the tilt of the line between the eyes (positive: clockwise in the image). Yaw is an
    estimate from where the nose tip falls between the eyes once the roll is undone: asin of its offset from their
    midpoint over half their distance (0 facing the camera, +-90 in profile; positive: the nose towards the image's
    right)."""
    (first_x, first_y, second_x, second_y, nose_x, nose_y) = landmarks[:6]
    # Order the eyes left to right in the image, whichever way the detector named them.
    if second_x < first_x:
        first_x, first_y, second_x, second_y = second_x, second_y, first_x, first_y
    dx, dy = second_x - first_x, second_y - first_y
    distance = math.hypot(dx, dy)
    if distance < 1e-6:
        return 0.0, 0.0
    roll = math.degrees(math.atan2(dy, dx))
    mid_x, mid_y = (first_x + second_x) / 2, (first_y + second_y) / 2
    # The nose's offset along the eye line (the roll undone).
    along = ((nose_x - mid_x) * dx + (nose_y - mid_y) * dy) / distance
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, along / (distance / 2)))))
    return yaw, roll
