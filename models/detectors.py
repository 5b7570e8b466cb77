"""Face detectors: YuNet on ONNX Runtime, fetched into the model cache on first use, else OpenCV's Haar cascade.

`fetch_yunet` downloads YuNet with a sha256 check, bounded in time and size, once however many processes start
together (`load_detector`, and `fervid models fetch` in models/commands/detector_fetch.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import filelock
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from fervid.errors import CHECKSUM_MISMATCH, DETECTOR_UNAVAILABLE, DOWNLOAD_FAILED, FervidError
from fervid.netpolicy import RefusedDestination, open_public
from fervid.settings import Settings
from models.network_io import Framing

log = logging.getLogger(__name__)
# Its own logger, so that commands that log only warnings (`fervid analyze`) still show a first-use download.
download_log = logging.getLogger(f"{__name__}.download")
PROGRESS_EVERY_S = 1.0

YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_MAX_BYTES = 4 << 20  # the file is 232,589 bytes: anything far larger is not YuNet
DOWNLOAD_DEADLINE_S = 60.0  # the whole download, not each read: a trickling server cannot hold a worker's start
DOWNLOAD_CHUNK = 64 << 10
READ_TIMEOUT_S = 10.0  # per socket operation; the deadline bounds their sum
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
WHAT_TO_DO = f"run `fervid models fetch` or set FERVID_DETECTOR_PATH to a copy of {YUNET_FILENAME}"

# Detection runs on frames scaled so the longer side is at most this: faces big enough to read an emotion
# from survive, and a 4K frame costs what a 720p one does.
DETECT_MAX_SIDE = 960
MIN_FACE_PIXELS = 16  # smaller faces carry too little for a 48x48-trained classifier
# YuNet sees frames shrunk by this much more (`bench/detect_size.py`, models/MODEL_CARD.md): the classifier reads a
# face from about 32 px in the frame (top-1 within 2.3 points of 48 px; at 24 px it loses 6), and YuNet found every
# real face from 22 px at its input; 22 / 32 keeps those faces at under half the pixels.
YUNET_INPUT_SCALE = 22 / 32


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels, clipped to the frame
    score: float  # detector confidence in [0, 1]


class FaceDetector(Protocol):
    name: str  # "yunet" | "haar": recorded with every job
    reason: str  # why this detector runs (its file, or why YuNet could not be had)
    framing: Framing  # how its boxes are cropped for the classifier

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Faces in a BGR frame, left to right."""
        ...


def _downscale(image: NDArray[np.uint8], most: float = 1.0) -> tuple[NDArray[np.uint8], float]:
    """The frame as the detector gets it, at most `most` of its size, and the scale applied."""
    height, width = image.shape[:2]
    scale = min(most, DETECT_MAX_SIDE / max(height, width))
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


YUNET_STRIDES = (8, 16, 32)  # YuNet's three heads: one prediction per cell of each stride's grid
YUNET_TOP_K = 5000  # boxes kept for non-maximum suppression, best first
DETECTOR_THREADS = 1
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

    def __init__(self, model_path: Path, score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 reason: str = "", threads: int = 0, cache_dir: Path | None = None) -> None:
        self.model_path = model_path
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
        self._outputs = [f"{head}_{stride}" for head in ("cls", "obj", "bbox") for stride in YUNET_STRIDES]

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        small, scale = _downscale(image, YUNET_INPUT_SCALE)
        height, width = small.shape[:2]
        # The strides need a multiple of 32: pad right and bottom with black, which moves no box.
        padded = np.zeros((3, -(-height // 32) * 32, -(-width // 32) * 32), np.float32)
        padded[:, :height, :width] = small.transpose(2, 0, 1)
        heads = self._session.run(self._outputs, {self._input: padded[None]})
        boxes, scores = [], []
        for i, stride in enumerate(YUNET_STRIDES):
            cls, obj, bbox = heads[i][0, :, 0], heads[3 + i][0, :, 0], heads[6 + i][0]
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
        if not boxes:
            return []
        all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
        kept = cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(), self.score_threshold, self.nms_threshold,
                                top_k=YUNET_TOP_K)
        raw = [(*map(float, all_boxes[k]), float(all_scores[k])) for k in np.ravel(kept)]
        return _to_detections(raw, scale, image.shape)  # type: ignore[arg-type]


class HaarDetector:
    """The cascade shipped inside opencv-python: no download, lower recall on non-frontal faces."""

    name = "haar"
    framing = Framing(side=1.029)  # fitted as YuNet's

    def __init__(self, reason: str = "the Haar cascade was asked for") -> None:
        self.reason = reason
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FervidError(f"OpenCV's Haar cascade {path} is missing; install opencv-python-headless<5",
                              code=DETECTOR_UNAVAILABLE)

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


@dataclass(frozen=True)
class DetectorPlan:
    """Which detector a process would start, and why, decided from files and settings alone (no download)."""

    yunet_file: Path | None  # a YuNet file to load as it is
    download_url: str  # else, when not empty, where to fetch YuNet from into the cache first
    reason: str

    def describe(self) -> str:
        if self.yunet_file is not None:
            return f"yunet ({self.reason})"
        if self.download_url:
            return f"yunet after a first-use download ({self.reason}; haar if that download fails)"
        return f"haar ({self.reason}; {WHAT_TO_DO})"


def plan_detector(detector_path: Path | None, model_cache_dir: Path, detector_url: str) -> DetectorPlan:
    """FERVID_DETECTOR_PATH, else a fetched copy in the model cache, else a download from FERVID_DETECTOR_URL, else
    Haar. A configured path that does not exist is an error, not a fallback: someone meant a file."""
    if detector_path is not None:
        if not detector_path.is_file():
            raise FervidError(f"FERVID_DETECTOR_PATH {detector_path} does not exist", code=DETECTOR_UNAVAILABLE)
        return DetectorPlan(detector_path, "", f"FERVID_DETECTOR_PATH {detector_path}")
    cached = model_cache_dir / YUNET_FILENAME
    if cached.is_file():
        return DetectorPlan(cached, "", f"cached at {cached}")
    if detector_url:
        return DetectorPlan(None, detector_url, f"from {detector_url} into {model_cache_dir}")
    return DetectorPlan(None, "", f"no YuNet in {model_cache_dir} and FERVID_DETECTOR_URL is empty (no download)")


# One download attempt per process start: a worker's pool processes, forked after the parent tried, reuse its
# outcome instead of each retrying (and each outlasting Celery's wait for a pool process to come up).
_failed_downloads: dict[tuple[Path, str], str] = {}


def find_or_fetch_yunet(settings: Settings) -> tuple[Path | None, str]:
    """The YuNet file to load and why, downloading it into the model cache when the plan says so; (None, why not)
    when it cannot be had."""
    plan = plan_detector(settings.detector_path, settings.model_cache_dir, settings.detector_url)
    if plan.yunet_file is not None or not plan.download_url:
        return plan.yunet_file, plan.reason
    attempt = (settings.model_cache_dir, plan.download_url)
    if attempt in _failed_downloads:
        return None, _failed_downloads[attempt]
    try:
        download_log.info("downloading YuNet (first use) from %s into %s", plan.download_url,
                          settings.model_cache_dir)
        path = fetch_yunet(settings.model_cache_dir, plan.download_url, on_progress=DownloadProgress())
    except FervidError as error:
        _failed_downloads[attempt] = f"{error.code}: {error.message}"
        return None, _failed_downloads[attempt]
    return path, f"downloaded from {plan.download_url} to {path}"


def load_detector(settings: Settings) -> FaceDetector:
    """YuNet, downloaded first when needed; the Haar cascade, with a warning naming why, when it cannot be had."""
    path, reason = find_or_fetch_yunet(settings)
    if path is not None:
        log.info("face detector: YuNet (%s)", reason)
        # One thread: YuNet's small convolutions gain little from more, and the classifier runs beside it on the
        # others (worker/pipeline.py overlaps them); processes, not threads, scale detection out.
        return YuNetDetector(path, reason=reason, threads=DETECTOR_THREADS, cache_dir=settings.model_cache_dir)
    log.warning("face detector: falling back to the Haar cascade, which finds fewer faces than YuNet (%s); %s",
                reason, WHAT_TO_DO)
    return HaarDetector(reason=reason)


class DownloadProgress:
    """A download's progress lines: the first piece, then at most one every PROGRESS_EVERY_S, and the last."""

    def __init__(self) -> None:
        self.last_line = -math.inf

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if done == total or now - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = now
            download_log.info("downloading YuNet: %d / %s bytes", done, total if total is not None else "?")


def fetch_yunet(target_dir: Path, url: str, on_progress: Callable[[int, int | None], None] | None = None, *,
                deadline_s: float = DOWNLOAD_DEADLINE_S, max_bytes: int = YUNET_MAX_BYTES) -> Path:
    """Downloads YuNet into target_dir, refusing a file whose sha256 differs from the published one.

    Processes starting together take turns on a file lock, so one downloads and the others find its file;
    the file appears whole or not at all. `on_progress(bytes so far, total or None)` follows the download.
    """
    target = target_dir / YUNET_FILENAME
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        # The lock waits out another process's download, which is itself bounded by the deadline.
        with filelock.FileLock(target_dir / f"{YUNET_FILENAME}.lock", timeout=deadline_s + READ_TIMEOUT_S):
            if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == YUNET_SHA256:
                return target
            payload = _download(url, target_dir, on_progress, deadline_s, max_bytes)
            digest = hashlib.sha256(payload).hexdigest()
            if digest != YUNET_SHA256:
                raise FervidError(f"the file at {url} has sha256 {digest}, not YuNet's {YUNET_SHA256}; not installed",
                                  code=CHECKSUM_MISMATCH)
            with tempfile.NamedTemporaryFile(dir=target_dir, prefix=f".{YUNET_FILENAME}.", delete=False) as partial:
                partial.write(payload)
            os.replace(partial.name, target)
    except OSError as error:  # an unwritable cache, or a lock held past the deadline
        raise FervidError(f"could not install YuNet in {target_dir}: {error}. Set FERVID_MODEL_CACHE_DIR to a "
                          "writable folder or FERVID_DETECTOR_PATH to a copy", code=DOWNLOAD_FAILED) from error
    return target


def _download(url: str, target_dir: Path, on_progress: Callable[[int, int | None], None] | None, deadline_s: float,
              max_bytes: int) -> bytes:
    def failed(why: str) -> FervidError:
        return FervidError(f"could not download {url}: {why}. Copy {YUNET_FILENAME} into {target_dir} or set "
                           "FERVID_DETECTOR_PATH", code=DOWNLOAD_FAILED)

    deadline = time.monotonic() + deadline_s
    chunks: list[bytes] = []
    done = 0
    try:
        # The operator's URL (https, an internal mirror, a test's loopback server): private addresses allowed,
        # but http(s) only, redirects included.
        with open_public(url, timeout=min(READ_TIMEOUT_S, deadline_s), allow_private=True) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise failed(f"it is {total} bytes, more than the {max_bytes} a YuNet file can be")
            while chunk := response.read1(DOWNLOAD_CHUNK):  # what has arrived, so a trickle meets the deadline
                done += len(chunk)
                if done > max_bytes:
                    raise failed(f"it is more than the {max_bytes} bytes a YuNet file can be")
                if time.monotonic() > deadline:
                    raise failed(f"it took more than {deadline_s:g} s")
                chunks.append(chunk)
                if on_progress is not None:
                    on_progress(done, total)
    except (OSError, RefusedDestination) as error:
        raise failed(str(error)) from error
    return b"".join(chunks)
