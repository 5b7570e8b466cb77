"""The shipped artifact and what it says about itself: the ONNX metadata keys `fervid export` writes, how to
preprocess faces for it and how to read its output."""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

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
# Probabilities are divided in log space by this (temperature scaling, fitted on PublicTest by `fervid calibrate`)
# after the TTA average, by every backend; absent: 1, as the network gives them.
TEMPERATURE_KEY = "fervid.temperature"
MEMBERS_KEY = "fervid.members"  # networks whose probabilities the graph averages (absent: 1)
# Provenance, for people and for `fervid train --init model`; an ensemble's init, epochs, public_acc and stem hold
# one comma-separated value per member.
INIT_KEY = "fervid.init"
EPOCHS_KEY = "fervid.epochs"  # epochs the network has trained in all
INPUT_SIZE_KEY = "fervid.input_size"
STEM_KEY = "fervid.stem"  # one of STEMS; absent: LEGACY_STEM, the stem of every model exported before it
DATA_SHA_KEY = "fervid.data_sha256"
GIT_COMMIT_KEY = "fervid.git_commit"
PUBLIC_ACC_KEY = "fervid.public_acc"  # PublicTest top-1 recorded by training (no TTA)
PUBLIC_CROWD_KEY = "fervid.public_crowd"  # PublicTest agreement with the FER+ crowd majority, likewise
FERPLUS_WEIGHT_KEY = "fervid.ferplus_weight"  # how much of the FER+ votes its training targets took (0: labels only)
# How the initializers are stored: fp32 | fp16 | int8-scaled (`fervid export`), or int8 for a QDQ graph
# (`fervid quantize`); absent in files from before it was written.
WEIGHTS_KEY = "fervid.weights"
PER_MEMBER_KEYS = (INIT_KEY, EPOCHS_KEY, PUBLIC_ACC_KEY, STEM_KEY, PUBLIC_CROWD_KEY, FERPLUS_WEIGHT_KEY)

# The network's first layers (models.training.network builds them): imagenet: torchvision's 7x7 stride-2 convolution
# and 3x3 stride-2 max-pool (input / 4 at layer1); small: a 3x3 stride-1 convolution, no pool (input / 1);
# small-pool: the same with the max-pool (input / 2).
STEMS = ("imagenet", "small", "small-pool")
# What a model without a recorded stem has: every network trained before stems were a choice.
LEGACY_STEM = "imagenet"


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
    weights: str = ""  # WEIGHTS_KEY; "": not recorded
    temperature: float = 1.0  # TEMPERATURE_KEY


# ONNX's ModelProto field numbers (onnx.proto): the graph, and metadata_props as StringStringEntryProto messages.
_GRAPH_FIELD = 7
_METADATA_FIELD = 14
_ENTRY_KEY_FIELD, _ENTRY_VALUE_FIELD = 1, 2


def _varint(data: bytes | mmap.mmap, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated or malformed protobuf varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


VARINT, LENGTH_DELIMITED = 0, 2  # protobuf wire types


def walk_fields(data: bytes | mmap.mmap, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, a, b) of each varint and length-delimited field of the message in data[start:end]:
    a varint's value as a (b = -1), a length-delimited field's span as data[a:b]; fixed-width fields are skipped."""
    fields = []
    at = start
    while at < end:
        tag, at = _varint(data, at)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            value, at = _varint(data, at)
            fields.append((number, wire_type, value, -1))
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        elif wire_type == LENGTH_DELIMITED:
            length, at = _varint(data, at)
            fields.append((number, wire_type, at, at + length))
            at += length
        else:
            raise ValueError(f"protobuf wire type {wire_type} is not one ONNX files use")
    if at != end:
        raise ValueError("truncated protobuf message")
    return fields


def message_fields(data: bytes | mmap.mmap, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in data[start:end]."""
    return [(number, a, b) for number, wire_type, a, b in walk_fields(data, start, end)
            if wire_type == LENGTH_DELIMITED]


def read_metadata(path: Path) -> dict[str, str]:
    """The model's metadata_props, read off the file's protobuf framing without parsing the graph (which the onnx
    package takes a second to import and parse, and ONNX Runtime a session to load): a worker reads it at every
    start. Raises ValueError for a file that is not an ONNX model."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, not an ONNX model")
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        top = message_fields(data, 0, len(data))
        if not any(number == _GRAPH_FIELD for number, _, _ in top):
            raise ValueError(f"{path} is not an ONNX model (no graph)")
        metadata = {}
        for number, start, end in top:
            if number == _METADATA_FIELD:
                entry = {field: bytes(data[a:b]).decode() for field, a, b in message_fields(data, start, end)}
                metadata[entry.get(_ENTRY_KEY_FIELD, "")] = entry.get(_ENTRY_VALUE_FIELD, "")
        return metadata


def read_model_spec(path: Path) -> ModelSpec:
    """Reads and checks the artifact's metadata; a model that does not describe itself is refused."""
    if not path.is_file():
        raise FileNotFoundError(f"emotion model {path} not found (set FERVID_MODEL_PATH or run `fervid export`)")
    meta = read_metadata(path)
    missing = [key for key in (LABELS_KEY, PREPROCESS_KEY, OUTPUT_KEY) if key not in meta]
    if missing:
        raise ValueError(f"{path} lacks metadata {missing}; export it with `fervid export`")
    labels = tuple(label.strip() for label in meta[LABELS_KEY].split(","))
    if labels != EMOTIONS:
        raise ValueError(f"{path} labels {labels} differ from the FER order {EMOTIONS}")
    output = meta[OUTPUT_KEY]
    if output not in ("probs", "logits"):
        raise ValueError(f"{path}: {OUTPUT_KEY} must be probs or logits, not {output!r}")
    temperature = float(meta.get(TEMPERATURE_KEY, "1"))
    if not 0.05 <= temperature <= 20.0:
        raise ValueError(f"{path}: {TEMPERATURE_KEY} must lie in [0.05, 20], not {temperature}")
    sha = sha256_file(path)
    return ModelSpec(
        path=path, name=meta.get(NAME_KEY, path.stem), version=meta.get(VERSION_KEY, sha[:12]), labels=labels,
        preprocess=Preprocess.from_json(meta[PREPROCESS_KEY]), output=output, tta=meta.get(TTA_KEY, ""), sha256=sha,
        members=int(meta.get(MEMBERS_KEY, "1")), weights=meta.get(WEIGHTS_KEY, ""), temperature=temperature,
    )
