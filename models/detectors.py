"""Face detectors: YuNet (cv2.FaceDetectorYN) when its ONNX file is configured or cached, else OpenCV's Haar cascade.

`fetch_yunet` downloads YuNet with a sha256 check (`fervid models fetch`, models/commands/detector_fetch.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from fervid.errors import FervidError
from fervid.settings import Settings, get_settings

log = logging.getLogger(__name__)

YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
YUNET_URL = (
    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
)
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"

# Detection runs on frames scaled so the longer side is at most this: faces big enough to read an emotion
# from survive, and a 4K frame costs what a 720p one does.
DETECT_MAX_SIDE = 960
MIN_FACE_PIXELS = 16  # smaller faces carry too little for a 48x48-trained classifier


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels, clipped to the frame
    score: float  # detector confidence in [0, 1]


class FaceDetector(Protocol):
    name: str
    crop_side: float  # the classifier's crop: a square centred on the box, this times the box's longer side

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Faces in a BGR frame, left to right."""
        ...


def _downscale(image: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], float]:
    height, width = image.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    if scale < 1.0:
        image = np.asarray(cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                                      interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return image, scale


def _to_detections(raw: list[tuple[float, float, float, float, float]], scale: float,
                   shape: tuple[int, ...]) -> list[Detection]:
    height, width = shape[:2]
    found = []
    for x, y, w, h, score in raw:
        x0, y0 = max(0, math.floor(x / scale)), max(0, math.floor(y / scale))
        x1, y1 = min(width, math.ceil((x + w) / scale)), min(height, math.ceil((y + h) / scale))
        if x1 - x0 >= MIN_FACE_PIXELS and y1 - y0 >= MIN_FACE_PIXELS:
            found.append(Detection((x0, y0, x1 - x0, y1 - y0), float(min(1.0, max(0.0, score)))))
    return sorted(found, key=lambda d: (d.box[0], d.box[1]))


class YuNetDetector:
    name = "yunet"
    # The square that reproduces FER-2013's framing, which forehead to chin fills: fitted on 2,000 `train` faces by
    # `bench/crop_framing.py` (models/MODEL_CARD.md, "Framing faces as the network learnt them").
    crop_side = 1.014

    def __init__(self, model_path: Path, score_threshold: float = 0.7, nms_threshold: float = 0.3) -> None:
        self.model_path = model_path
        self._detector = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold, nms_threshold,
                                                   5000)
        self._input_size = (320, 320)

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        small, scale = _downscale(image)
        size = (small.shape[1], small.shape[0])
        if size != self._input_size:
            self._detector.setInputSize(size)
            self._input_size = size
        _, faces = self._detector.detect(small)
        if faces is None:
            return []
        raw = [(float(f[0]), float(f[1]), float(f[2]), float(f[3]), float(f[14])) for f in faces]
        return _to_detections(raw, scale, image.shape)


class HaarDetector:
    """The cascade shipped inside opencv-python: no download, lower recall on non-frontal faces."""

    name = "haar"
    crop_side = 1.029  # fitted as YuNet's

    def __init__(self) -> None:
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FervidError(f"OpenCV's Haar cascade {path} is missing; install opencv-python-headless<5",
                              code="detector_unavailable")

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        small, scale = _downscale(image)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24), outputRejectLevels=True
        )
        # Cascade stage weights are unbounded; a logistic maps them to a comparable 0-1 confidence.
        raw = [(float(x), float(y), float(w), float(h), 1.0 / (1.0 + math.exp(-float(weight) / 2.0)))
               for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=False)]
        return _to_detections(raw, scale, image.shape)


def yunet_path(settings: Settings) -> Path | None:
    """The YuNet file to use: FERVID_DETECTOR_PATH, else a fetched copy in the model cache, else none."""
    if settings.detector_path is not None:
        if not settings.detector_path.is_file():
            raise FervidError(f"FERVID_DETECTOR_PATH {settings.detector_path} does not exist",
                              code="detector_unavailable")
        return settings.detector_path
    cached = settings.model_cache_dir / YUNET_FILENAME
    return cached if cached.is_file() else None


def load_detector(settings: Settings | None = None) -> FaceDetector:
    settings = settings or get_settings()
    path = yunet_path(settings)
    if path is not None:
        log.info("face detector: YuNet from %s", path)
        return YuNetDetector(path)
    log.info("face detector: Haar cascade (no YuNet file; `fervid models fetch` downloads it)")
    return HaarDetector()


def fetch_yunet(target_dir: Path, url: str = YUNET_URL) -> Path:
    """Downloads YuNet into target_dir, refusing a file whose sha256 differs from the published one."""
    target = target_dir / YUNET_FILENAME
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == YUNET_SHA256:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - https or a test's loopback
            payload = response.read(16 << 20)
    except OSError as error:
        raise FervidError(f"could not download {url}: {error}. Copy {YUNET_FILENAME} into {target_dir} "
                          "or set FERVID_DETECTOR_PATH", code="download_failed") from error
    digest = hashlib.sha256(payload).hexdigest()
    if digest != YUNET_SHA256:
        raise FervidError(f"downloaded YuNet has sha256 {digest}, expected {YUNET_SHA256}; not installed",
                          code="checksum_mismatch")
    with tempfile.NamedTemporaryFile(dir=target_dir, delete=False) as partial:
        partial.write(payload)
    Path(partial.name).replace(target)
    return target
