"""The emotion classifier at run time: the ONNX artifact's metadata says how to preprocess and read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from fervid.files import sha256_file
from fervid.labels import EMOTIONS
from models.backends.base import InferenceBackend, run_in_batches

DEFAULT_MODEL_PATH = Path(__file__).with_name("fervid-emotion.onnx")

# Metadata keys written by `fervid export` and read here.
LABELS_KEY = "fervid.labels"
PREPROCESS_KEY = "fervid.preprocess"
OUTPUT_KEY = "fervid.output"
NAME_KEY = "fervid.name"
VERSION_KEY = "fervid.version"
TTA_KEY = "fervid.tta"  # "hflip": average with the mirrored face, as evaluated
MEMBERS_KEY = "fervid.members"  # networks whose probabilities the graph averages (absent: 1)
# Provenance, for people and for `fervid train --init model`; an ensemble's init, epochs and public_acc hold one
# comma-separated value per member.
INIT_KEY = "fervid.init"
EPOCHS_KEY = "fervid.epochs"  # epochs the network has trained in all
INPUT_SIZE_KEY = "fervid.input_size"
DATA_SHA_KEY = "fervid.data_sha256"
GIT_COMMIT_KEY = "fervid.git_commit"
PUBLIC_ACC_KEY = "fervid.public_acc"  # PublicTest top-1 recorded by training (no TTA)


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (H, W) of the network input
    channels: int  # 1: grey, 3: RGB
    scale: float  # pixel * scale, then (x - mean) / std per channel
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"
    # The resolution the model was trained at; crops pass through it first so the face looks like training data.
    native_size: tuple[int, int] | None = None

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        raw = json.loads(text)
        channels = int(raw["channels"])
        if channels not in (1, 3) or raw.get("layout", "NCHW") != "NCHW":
            raise ValueError(f"unsupported preprocess {raw!r}: channels must be 1 or 3, layout NCHW")
        mean, std = tuple(map(float, raw["mean"])), tuple(map(float, raw["std"]))
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"preprocess mean/std must have 1 or {channels} values")
        native = raw.get("native_size")
        return cls(
            size=(int(raw["size"][0]), int(raw["size"][1])), channels=channels, scale=float(raw["scale"]),
            mean=mean, std=std, layout="NCHW", native_size=(int(native[0]), int(native[1])) if native else None,
        )

    def to_json(self) -> str:
        raw: dict[str, object] = {"size": list(self.size), "channels": self.channels, "scale": self.scale,
                                  "mean": list(self.mean), "std": list(self.std), "layout": self.layout}
        if self.native_size:
            raw["native_size"] = list(self.native_size)
        return json.dumps(raw)


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    preprocess: Preprocess
    output: str  # probs | logits
    tta: str  # "" | "hflip"
    sha256: str
    members: int = 1  # networks averaged inside the graph


def read_model_spec(path: Path) -> ModelSpec:
    """Reads and checks the artifact's metadata; a model that does not describe itself is refused."""
    if not path.is_file():
        raise FileNotFoundError(f"emotion model {path} not found (set FERVID_MODEL_PATH or run `fervid export`)")
    # Metadata only: no graph optimisation (12x cheaper at start-up; the backend builds its own optimised session).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    missing = [key for key in (LABELS_KEY, PREPROCESS_KEY, OUTPUT_KEY) if key not in meta]
    if missing:
        raise ValueError(f"{path} lacks metadata {missing}; export it with `fervid export`")
    labels = tuple(label.strip() for label in meta[LABELS_KEY].split(","))
    if labels != EMOTIONS:
        raise ValueError(f"{path} labels {labels} differ from the FER order {EMOTIONS}")
    output = meta[OUTPUT_KEY]
    if output not in ("probs", "logits"):
        raise ValueError(f"{path}: {OUTPUT_KEY} must be probs or logits, not {output!r}")
    sha = sha256_file(path)
    return ModelSpec(
        path=path, name=meta.get(NAME_KEY, path.stem), version=meta.get(VERSION_KEY, sha[:12]), labels=labels,
        preprocess=Preprocess.from_json(meta[PREPROCESS_KEY]), output=output, tta=meta.get(TTA_KEY, ""), sha256=sha,
        members=int(meta.get(MEMBERS_KEY, "1")),
    )


def crop_face(frame: NDArray[np.uint8], box: tuple[int, int, int, int], side_per_box: float) -> NDArray[np.uint8]:
    """A square crop centred on the box, `side_per_box` times the box's longer side; edges are replicated where it
    leaves the frame. The network learnt FER-2013's tight framing, and each detector draws its box differently around
    the same face, so `side_per_box` is the detector's own (`FaceDetector.crop_side`)."""
    x, y, w, h = box
    side = max(w, h) * side_per_box
    cx, cy = x + w / 2.0, y + h / 2.0
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


class EmotionClassifier:
    """Crops in, 7-way probabilities out, in batches no larger than the backend takes."""

    def __init__(self, spec: ModelSpec, backend: InferenceBackend) -> None:
        self.spec = spec
        self.backend = backend

    def _forward(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        raw = run_in_batches(self.backend, batch)
        return softmax(raw) if self.spec.output == "logits" else raw

    def classify(self, crops: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        if not crops:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        batch = preprocess_faces(crops, self.spec.preprocess)
        probs = self._forward(batch)
        if self.spec.tta == "hflip":
            probs = (probs + self._forward(np.ascontiguousarray(batch[..., ::-1]))) / 2.0
        return probs.astype(np.float32)
