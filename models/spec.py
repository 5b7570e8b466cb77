"""The shipped artifact and what it says about itself: the ONNX metadata keys `fervid export` writes, how to
preprocess faces for it and how to read its output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from fervid.files import sha256_file
from fervid.labels import EMOTIONS

DEFAULT_MODEL_PATH = Path(__file__).with_name("fervid-emotion.onnx")

# Metadata keys written by `fervid export` and read here.
LABELS_KEY = "fervid.labels"
PREPROCESS_KEY = "fervid.preprocess"
OUTPUT_KEY = "fervid.output"
NAME_KEY = "fervid.name"
VERSION_KEY = "fervid.version"
TTA_KEY = "fervid.tta"  # "hflip": average with the mirrored face, as evaluated
MEMBERS_KEY = "fervid.members"  # networks whose probabilities the graph averages (absent: 1)
# Provenance, for people and for `fervid train --init model`; an ensemble's init, epochs, public_acc and stem hold
# one comma-separated value per member.
INIT_KEY = "fervid.init"
EPOCHS_KEY = "fervid.epochs"  # epochs the network has trained in all
INPUT_SIZE_KEY = "fervid.input_size"
STEM_KEY = "fervid.stem"  # models.network.STEMS; absent: "imagenet", the stem of every model exported before it
DATA_SHA_KEY = "fervid.data_sha256"
GIT_COMMIT_KEY = "fervid.git_commit"
PUBLIC_ACC_KEY = "fervid.public_acc"  # PublicTest top-1 recorded by training (no TTA)
PER_MEMBER_KEYS = (INIT_KEY, EPOCHS_KEY, PUBLIC_ACC_KEY, STEM_KEY)


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
