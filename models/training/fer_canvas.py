"""FER-2013 faces set in a larger picture, so that a detector can find them and a job's crop can be compared with
the FER-2013 framing (used by tests/unit/test_detectors.py and bench/crop_framing.py)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from models.detectors import FaceDetector

ENLARGE = 3  # 48 px faces become 144 px: well above the detectors' smallest faces
BORDERS = {"replicate": cv2.BORDER_REPLICATE, "mirror": cv2.BORDER_REFLECT_101}

Box = tuple[int, int, int, int]


def in_canvas(face: NDArray[np.uint8], border: int) -> NDArray[np.uint8]:
    """The face enlarged ENLARGE times, centred in a BGR canvas twice its size; the picture around a FER-2013 face
    is lost, so `border` (a cv2.BORDER_* mode) makes it up from the face's edge pixels."""
    side = face.shape[0] * ENLARGE
    enlarged = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    pad = side // 2
    return np.asarray(cv2.cvtColor(cv2.copyMakeBorder(enlarged, pad, pad, pad, pad, border), cv2.COLOR_GRAY2BGR),
                      dtype=np.uint8)


def find_face(detector: FaceDetector, canvas: NDArray[np.uint8]) -> Box | None:
    """The detection nearest the canvas centre, if its centre lies on the face; None otherwise."""
    centre, half = canvas.shape[0] / 2, canvas.shape[0] / 4
    boxes = [d.box for d in detector.detect(canvas)]
    if not boxes:
        return None
    box = min(boxes, key=lambda b: (b[0] + b[2] / 2 - centre) ** 2 + (b[1] + b[3] / 2 - centre) ** 2)
    if abs(box[0] + box[2] / 2 - centre) < half and abs(box[1] + box[3] / 2 - centre) < half:
        return box
    return None
