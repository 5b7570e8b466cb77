"""The network's inputs and outputs: a face cropped from a frame, the batch the artifact's metadata asks for, and
probabilities from logits. The classifier and the INT8 self-check both feed the network through these."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from models.spec import Preprocess


@dataclass(frozen=True)
class Framing:
    """How a detector's box becomes the classifier's crop: a square `side` times the box's longer side, its centre
    moved from the box's by (`dx`, `dy`) times that longer side (+: right, down). The network learnt FER-2013's tight
    framing, and each detector draws its box differently around the same face, so each has its own
    (`FaceDetector.framing`, fitted by bench/crop_framing.py)."""

    side: float
    dx: float = 0.0
    dy: float = 0.0


def crop_face(frame: NDArray[np.uint8], box: tuple[int, int, int, int], framing: Framing) -> NDArray[np.uint8]:
    """The square crop `framing` puts around the box; edges are replicated where it leaves the frame."""
    x, y, w, h = box
    longer = max(w, h)
    side = longer * framing.side
    cx, cy = x + w / 2.0 + framing.dx * longer, y + h / 2.0 + framing.dy * longer
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    x1, y1 = x0 + max(1, int(round(side))), y0 + max(1, int(round(side)))
    frame_h, frame_w = frame.shape[:2]
    inside = frame[max(0, y0) : min(frame_h, y1), max(0, x0) : min(frame_w, x1)]
    top, left, bottom, right = max(0, -y0), max(0, -x0), max(0, y1 - frame_h), max(0, x1 - frame_w)
    if top or left or bottom or right:
        # Only the crop is padded, and it is a copy: pending crops never keep whole frames alive.
        return np.asarray(cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_REPLICATE), dtype=np.uint8)
    return inside.copy()

def preprocess_faces(crops: list[NDArray[np.uint8]], spec: Preprocess) -> NDArray[np.float32]:
    """BGR (or grey) crops -> the (N, C, H, W) float batch the model's metadata asks for."""
    height, width = spec.size
    batch = np.empty((len(crops), spec.channels, height, width), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    for i, crop in enumerate(crops):
        if spec.channels == 1:
            image = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        else:
            image = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB if crop.ndim == 2 else cv2.COLOR_BGR2RGB)
        if spec.native_size:
            native_h, native_w = spec.native_size
            image = cv2.resize(image, (native_w, native_h), interpolation=cv2.INTER_AREA)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        pixels = image.astype(np.float32).reshape(height, width, spec.channels).transpose(2, 0, 1)
        batch[i] = (pixels * spec.scale - mean) / std
    return batch

def softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def temperature_scaled(probs: NDArray[np.float32], temperature: float) -> NDArray[np.float32]:
    """softmax(log(probs) / T): the same ranking, sharper (T < 1) or softer (T > 1); T = 1 returns `probs`."""
    if temperature == 1.0:
        return probs
    return softmax((np.log(np.maximum(probs, 1e-12)) / temperature).astype(np.float32))
