"""Real faces every machine has: the public-domain portrait of Grace Hopper that matplotlib ships, and fixed faces
made from it (bench/int8_emulated.py's check faces; bench/detect_size.py and bench/detect_recall.py place it)."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from numpy.typing import NDArray

from models.network_io import Framing, crop_face

CHECK_FACES = 256
CHECK_SEED = 48
CHECK_SIZE = 48  # FER-2013's own size: what the classifier resizes every crop through
# Where the face is in matplotlib's grace_hopper.jpg (x, y, w, h): the Haar cascade's box, fixed here so that the
# check faces never depend on a detector (tests/unit/test_int8_emulated.py holds it against the cascade).
PORTRAIT_FACE = (155, 105, 222, 222)


def portrait_image() -> NDArray[np.uint8]:
    """The public-domain portrait of Grace Hopper that matplotlib ships (BGR)."""
    from matplotlib import cbook

    return np.asarray(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), dtype=np.uint8)


@cache
def check_faces(count: int = CHECK_FACES) -> NDArray[np.uint8]:
    """`count` (48, 48) grey faces, the same on every machine: the portrait's face framed, turned, lit and occluded
    many ways so that the classifier's answers spread over several emotions, with one crop in four taken from
    elsewhere in the picture."""
    grey = np.asarray(cv2.cvtColor(portrait_image(), cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    height, width = grey.shape
    x, y, w, h = PORTRAIT_FACE
    rng = np.random.default_rng(CHECK_SEED)
    faces = np.empty((count, CHECK_SIZE, CHECK_SIZE), dtype=np.uint8)
    for index in range(count):
        if index % 4 == 3:
            side = int(rng.integers(40, min(height, width) // 2))
            box = (int(rng.integers(0, width - side)), int(rng.integers(0, height - side)), side, side)
        else:
            side = int(max(w, h) * rng.uniform(0.75, 1.5))
            cx, cy = x + w / 2 + rng.uniform(-0.15, 0.15) * side, y + h / 2 + rng.uniform(-0.15, 0.15) * side
            box = (int(cx - side / 2), int(cy - side / 2), side, side)
        crop = crop_face(grey, box, Framing(side=1.0))
        turn = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), rng.uniform(-25, 25), 1.0)
        turned = cv2.warpAffine(crop, turn, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        image = cv2.resize(turned, (CHECK_SIZE, CHECK_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = 255.0 * (image / 255.0) ** rng.uniform(0.6, 1.6)  # gamma
        image = (image - 128.0) * rng.uniform(0.6, 1.3) + 128.0 + rng.uniform(-25, 25)  # contrast, brightness
        image += rng.normal(0.0, rng.uniform(0.0, 10.0), image.shape)
        if rng.random() < 0.3:
            top, left = rng.integers(0, CHECK_SIZE - 12, 2)
            image[top : top + rng.integers(8, 24), left : left + rng.integers(8, 24)] = rng.uniform(0, 255)
        faces[index] = np.clip(image, 0, 255).astype(np.uint8)
    return faces
