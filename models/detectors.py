"""Face detectors: YuNet on ONNX Runtime, fetched into the model cache on first use (models/detector_files.py), else
OpenCV's Haar cascade."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from fervid.errors import DETECTOR_UNAVAILABLE, FervidError
from fervid.settings import Settings
from models.detector_files import WHAT_TO_DO, find_or_fetch_yunet
from models.network_io import Framing

log = logging.getLogger(__name__)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"

# Detection runs on frames scaled so the longer side is at most this (FERVID_DETECT_MAX_SIDE), and never shrunk
# further: every real face YuNet finds at full size from 28 px up is found at this size in frames up to 1280 px
# (720p), where the classifier reads faces from 30 px (`bench/detect_recall.py`, models/MODEL_CARD.md "The detector
# at a size that keeps faces"); larger frames (1080p, 4K) are shrunk to it, so their faces under about 45 px are
# found less often. 1920 keeps 1080p whole, at about 1.4x the time of a 1080p job (bench/detect_max_side.py).
DETECT_MAX_SIDE = 1280
MIN_FACE_PIXELS = 16  # smaller faces carry too little for a 48x48-trained classifier
YUNET_SCORE_THRESHOLD = 0.7


def detector_scale(height: int, width: int, max_side: int = DETECT_MAX_SIDE) -> float:
    """The scale a frame of this size is given to the detector at: at most `max_side` on its longer side."""
    return min(1.0, max_side / max(height, width))


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels, clipped to the frame
    score: float  # detector confidence in [0, 1]
    # YuNet's five points (eye, eye, nose tip, mouth corner, mouth corner) as x, y pairs in frame pixels; None from
    # a detector that gives none (Haar)
    landmarks: tuple[float, ...] | None = None


class FaceDetector(Protocol):
    name: str  # "yunet" | "haar": recorded with every job
    reason: str  # why this detector runs (its file, or why YuNet could not be had)
    framing: Framing  # how its boxes are cropped for the classifier

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Faces in a BGR frame, left to right."""
        ...


def _downscale(image: NDArray[np.uint8], scale: float) -> NDArray[np.uint8]:
    """The frame resized by `scale` (at most 1) for the detector."""
    height, width = image.shape[:2]
    if scale < 1.0:
        image = np.asarray(cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                                      interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return image


def _to_detections(raw: list[tuple[float, float, float, float, float]], scale: float, shape: tuple[int, ...],
                   landmarks: list[tuple[float, ...]] | None = None) -> list[Detection]:
    height, width = shape[:2]
    found = []
    for i, (x, y, w, h, score) in enumerate(raw):
        x0, y0 = max(0, math.floor(x / scale)), max(0, math.floor(y / scale))
        x1, y1 = min(width, math.ceil((x + w) / scale)), min(height, math.ceil((y + h) / scale))
        points = None if landmarks is None else tuple(value / scale for value in landmarks[i])
        if x1 - x0 >= MIN_FACE_PIXELS and y1 - y0 >= MIN_FACE_PIXELS:
            found.append(Detection((x0, y0, x1 - x0, y1 - y0), float(min(1.0, max(0.0, score))), points))
    return sorted(found, key=lambda d: (d.box[0], d.box[1]))


YUNET_STRIDES = (8, 16, 32)  # YuNet's three heads: one prediction per cell of each stride's grid
YUNET_TOP_K = 5000  # boxes kept for non-maximum suppression, best first
ANY_SIZE_REWRITE = "v1"  # in the cached file's name: a change to `any_size_yunet` must not reuse older files


def any_size_yunet(model_path: Path, cache_dir: Path | None) -> bytes:
    """YuNet's graph with its input's height and width (and its outputs' cell counts) left open.

    The published file declares a 640x640 input, which ONNX Runtime enforces, but the network is fully
    convolutional (its reshapes use -1): with the sizes open it runs on a frame's own size. The rewrite needs the
    onnx package, which takes a second to import, so it is kept in `cache_dir` (keyed by the file's sha256) and
    made once per machine.
    """
    original = model_path.read_bytes()
    cached = None
    if cache_dir is not None:
        cached = cache_dir / f"yunet-any-size-{ANY_SIZE_REWRITE}-{hashlib.sha256(original).hexdigest()[:16]}.onnx"
        if cached.is_file():
            return cached.read_bytes()
    import onnx

    model = onnx.load_from_string(original)
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise FervidError(f"{model_path} takes a {len(dims)}-d input, not YuNet's NCHW image",
                          code=DETECTOR_UNAVAILABLE)
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "cells"
    del model.graph.value_info[:]  # intermediate shapes recorded for 640x640 would be checked against each run
    rewritten = model.SerializeToString()
    if cached is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            with tempfile.NamedTemporaryFile(dir=cached.parent, prefix=f".{cached.name}.", delete=False) as partial:
                partial.write(rewritten)
            os.replace(partial.name, cached)
        except OSError as error:  # a read-only cache costs the rewrite at each start, nothing else
            log.info("could not keep %s: %s", cached, error)
    return bytes(rewritten)


class YuNetDetector:
    """YuNet (libfacedetection's anchor-free network) on ONNX Runtime, decoded here: per cell of each stride's grid
    a face score sqrt(class x objectness), a box centre offset in cells and a log size, then non-maximum
    suppression. ONNX Runtime runs it about twice as fast as OpenCV's DNN module on one core, with the thread
    count the worker chooses (`bench/detect_interval.py` prints its time per frame)."""

    name = "yunet"
    # Chosen on PublicTest among squares around FER-2013 faces found in frames (`bench/crop_framing.py --sweep`,
    # models/MODEL_CARD.md, "Framing faces as the network learnt them"): a little tighter than the box's longer
    # side and raised by 2.6 % of it, the median offset of FER-2013's own crop fitted on `train` faces.
    framing = Framing(side=0.96, dy=-0.026)

    def __init__(self, model_path: Path, score_threshold: float = YUNET_SCORE_THRESHOLD, nms_threshold: float = 0.3,
                 reason: str = "", threads: int = 0, cache_dir: Path | None = None,
                 max_side: int = DETECT_MAX_SIDE) -> None:
        self.model_path, self.max_side = model_path, max_side
        self.reason = reason or f"YuNet from {model_path}"
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the classifier's, and why
        try:
            self._session = ort.InferenceSession(any_size_yunet(model_path, cache_dir), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:  # onnx and onnxruntime raise their own types for a file that is not a model
            raise FervidError(f"{model_path} is not a YuNet model ONNX Runtime can run ({error})",
                              code=DETECTOR_UNAVAILABLE) from error
        self._input = self._session.get_inputs()[0].name
        self._outputs = [f"{head}_{stride}" for head in ("cls", "obj", "bbox", "kps") for stride in YUNET_STRIDES]

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        return self.detect_at(image, detector_scale(image.shape[0], image.shape[1], self.max_side))

    def detect_at(self, image: NDArray[np.uint8], scale: float) -> list[Detection]:
        """`detect` with the frame given to YuNet at `scale` (benches compare scales)."""
        small = _downscale(image, scale)
        height, width = small.shape[:2]
        # The strides need a multiple of 32: pad right and bottom with black, which moves no box.
        padded = np.zeros((3, -(-height // 32) * 32, -(-width // 32) * 32), np.float32)
        padded[:, :height, :width] = small.transpose(2, 0, 1)
        heads = self._session.run(self._outputs, {self._input: padded[None]})
        boxes, scores, points = [], [], []
        for i, stride in enumerate(YUNET_STRIDES):
            cls, obj, bbox, kps = heads[i][0, :, 0], heads[3 + i][0, :, 0], heads[6 + i][0], heads[9 + i][0]
            score = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))
            keep = np.flatnonzero(score >= self.score_threshold)
            if keep.size == 0:
                continue
            columns = padded.shape[2] // stride
            row, column = np.divmod(keep, columns)
            centre_x, centre_y = (column + bbox[keep, 0]) * stride, (row + bbox[keep, 1]) * stride
            box_w, box_h = np.exp(bbox[keep, 2]) * stride, np.exp(bbox[keep, 3]) * stride
            boxes.append(np.stack([centre_x - box_w / 2, centre_y - box_h / 2, box_w, box_h], axis=1))
            scores.append(score[keep])
            # Each point is an offset in cells from its anchor cell, as the box's centre is.
            cell = np.stack([column, row], axis=1).astype(np.float32)
            points.append(((kps[keep].reshape(-1, 5, 2) + cell[:, None, :]) * stride).reshape(-1, 10))
        if not boxes:
            return []
        all_boxes, all_scores, all_points = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        kept = np.ravel(cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(), self.score_threshold,
                                         self.nms_threshold, top_k=YUNET_TOP_K))
        raw = [(*map(float, all_boxes[k]), float(all_scores[k])) for k in kept]
        landmarks = [tuple(float(value) for value in all_points[k]) for k in kept]
        return _to_detections(raw, scale, image.shape, landmarks)  # type: ignore[arg-type]


class HaarDetector:
    """The cascade shipped inside opencv-python: no download, lower recall on non-frontal faces."""

    name = "haar"
    framing = Framing(side=1.029)  # fitted as YuNet's

    def __init__(self, reason: str = "the Haar cascade was asked for", max_side: int = DETECT_MAX_SIDE) -> None:
        self.reason, self.max_side = reason, max_side
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FervidError(f"OpenCV's Haar cascade {path} is missing; install opencv-python-headless<5",
                              code=DETECTOR_UNAVAILABLE)

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        scale = detector_scale(image.shape[0], image.shape[1], self.max_side)
        small = _downscale(image, scale)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24), outputRejectLevels=True
        )
        # Cascade stage weights are unbounded; a logistic maps them to a comparable 0-1 confidence.
        raw = [(float(x), float(y), float(w), float(h), 1.0 / (1.0 + math.exp(-float(weight) / 2.0)))
               for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=False)]
        return _to_detections(raw, scale, image.shape)


def load_detector(settings: Settings, threads: int) -> FaceDetector:
    """YuNet on `threads` threads, downloaded first when needed; the Haar cascade, with a warning naming why, when it
    cannot be had."""
    path, reason = find_or_fetch_yunet(settings)
    if path is not None:
        log.info("face detector: YuNet (%s)", reason)
        return YuNetDetector(path, reason=reason, threads=threads, cache_dir=settings.model_cache_dir,
                             max_side=settings.detect_max_side)
    log.warning("face detector: falling back to the Haar cascade, which finds fewer faces than YuNet (%s); %s",
                reason, WHAT_TO_DO)
    return HaarDetector(reason=reason, max_side=settings.detect_max_side)


