"""Export (`fervid export`): training checkpoints -> the self-describing ONNX artifact the runtime loads.

The graph takes preprocessed faces (batch, 1, S, S) named `faces` and returns softmax probabilities named `probs`.
Initializer names equal the PyTorch state-dict keys (the torch-cuda backend loads weights by those names). Given
several checkpoints it exports their ensemble: one graph averaging the members' probabilities, member i's weights
named `members.i.<key>`. A member may also be an earlier `fervid export` (single network), so a shipped model can
join an ensemble after its training run is gone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from onnx import numpy_helper
from torch import Tensor

from fervid.errors import (
    CHECKPOINT_NOT_FOUND,
    DATA_NOT_FOUND,
    EXPORT_FAILED,
    EXPORT_MISMATCH,
    INVALID_CHECKPOINT,
    INVALID_REQUEST,
    FervidError,
)
from fervid.files import sha256_file
from fervid.labels import EMOTIONS
from models.graph_rewrites import (
    WEIGHT_FORMATS,
    WeightFormat,
    WeightStorageError,
    restore_fp32_weights,
    store_weights,
)
from models.spec import (
    DATA_SHA_KEY,
    EPOCHS_KEY,
    FERPLUS_WEIGHT_KEY,
    GIT_COMMIT_KEY,
    INIT_KEY,
    INPUT_SIZE_KEY,
    LABELS_KEY,
    LEGACY_STEM,
    MEMBERS_KEY,
    NAME_KEY,
    OUTPUT_KEY,
    PREPROCESS_KEY,
    PUBLIC_ACC_KEY,
    PUBLIC_CROWD_KEY,
    STEM_KEY,
    TTA_KEY,
    VERSION_KEY,
    WEIGHTS_KEY,
    Preprocess,
)
from models.training.fer2013 import load_split
from models.training.network import EmotionResNet50
from models.training.predict import NATIVE_SIZE, PIXEL_MEAN, PIXEL_STD, to_input

MODEL_NAME = "fervid-resnet50-fer2013"
OPSET = 17
INPUT_NAME = "faces"
OUTPUT_NAME = "probs"
# Max |p_onnx - p_torch| accepted when verifying an export; fp16 and int8 storage round every weight.
TOLERANCE: dict[WeightFormat, float] = {"fp32": 1e-3, "fp16": 5e-3, "int8-scaled": 5e-2}
VERIFY_FACES = 64



@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state_dict: dict[str, Tensor]
    config: dict[str, Any]
    epoch: int  # zero-based epoch the checkpoint was saved after
    public_acc: float  # the network's PublicTest top-1 as training measured it (no TTA)
    public_crowd: float | None = None  # its agreement with the FER+ crowd majority there, when measured
    data_sha256: str | None = None  # known when the member is an earlier export, which records it

    @property
    def input_size(self) -> int:
        return int(self.config.get("input_size", 64))

    @property
    def stem(self) -> str:
        """models.spec.STEMS; checkpoints from before stems were a choice hold the imagenet one."""
        return str(self.config.get("stem") or LEGACY_STEM)

    @property
    def init(self) -> str:
        """How the network's training began; a continued network (`--init model`) reports its origin's."""
        return str(self.config.get("prior_init") or self.config.get("init", "unknown"))

    @property
    def epochs(self) -> int:
        """Epochs trained in all, those before a continuation (`--init model`) included."""
        return self.epoch + 1 + int(self.config.get("prior_epochs") or 0)


def load_checkpoint(path: Path) -> Checkpoint:
    """Reads a `fervid train` checkpoint (best.pt / last.pt) or a single-network `fervid export` (.onnx)."""
    if not path.is_file():
        raise FervidError(f"checkpoint {path} not found; train one with `fervid train`", code=CHECKPOINT_NOT_FOUND)
    if path.suffix == ".onnx":
        return _load_exported(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a torn or foreign file
        raise FervidError(f"{path} is not a readable checkpoint ({error})", code=INVALID_CHECKPOINT) from error
    if not isinstance(state, dict) or "network" not in state:
        raise FervidError(f"{path} has no 'network' state dict; is it a `fervid train` checkpoint?",
                          code=INVALID_CHECKPOINT)
    # Checkpoints from before each recorded its own figures hold the run's best, which best.pt's network is.
    crowd = state.get("public_crowd", state.get("best_public_crowd"))
    return Checkpoint(path=path, state_dict=state["network"], config=dict(state.get("config", {})),
                      epoch=int(state.get("epoch", -1)),
                      public_acc=float(state.get("public_acc") or state.get("best_public") or float("nan")),
                      public_crowd=None if crowd is None else float(crowd))


def _load_exported(path: Path) -> Checkpoint:
    try:
        model = restore_fp32_weights(onnx.load(str(path)))
    except Exception as error:  # onnx raises protobuf's DecodeError and others for a foreign file
        raise FervidError(f"{path} is not a readable ONNX model ({error})", code=INVALID_CHECKPOINT) from error
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if int(meta.get(MEMBERS_KEY, "1")) != 1 or meta.get(WEIGHTS_KEY) not in WEIGHT_FORMATS:
        raise FervidError(f"{path} is not a single network exported by `fervid export` (an ensemble or a quantized "
                          "model cannot be a member)", code=INVALID_CHECKPOINT)
    weights = {init.name: init for init in model.graph.initializer}
    stem = meta.get(STEM_KEY, LEGACY_STEM)
    state = EmotionResNet50(num_classes=len(EMOTIONS), in_channels=1, stem=stem).state_dict()
    # BatchNorm's step counter is not exported and matters only in training: it keeps its fresh value.
    missing = [key for key in state if key not in weights and not key.endswith("num_batches_tracked")]
    if missing:
        raise FervidError(f"{path} lacks {len(missing)} EmotionResNet50 weights (first: {', '.join(missing[:3])})",
                          code=INVALID_CHECKPOINT)
    for key in state:
        if key in weights:
            state[key] = torch.from_numpy(numpy_helper.to_array(weights[key]).copy())
    config = {"init": meta.get(INIT_KEY, "unknown"), "input_size": int(meta.get(INPUT_SIZE_KEY, "64")), "stem": stem}
    return Checkpoint(path=path, state_dict=state, config=config, epoch=int(meta.get(EPOCHS_KEY, "0")) - 1,
                      public_acc=float(meta.get(PUBLIC_ACC_KEY, "nan")),
                      public_crowd=float(meta[PUBLIC_CROWD_KEY]) if PUBLIC_CROWD_KEY in meta else None,
                      data_sha256=meta.get(DATA_SHA_KEY))


def build_network(checkpoint: Checkpoint, network_type: type[EmotionResNet50] = EmotionResNet50) -> EmotionResNet50:
    """The checkpoint's network in eval mode, fp32, ready for inference."""
    network = network_type(num_classes=len(EMOTIONS), in_channels=1, stem=checkpoint.stem)
    network.load_state_dict(checkpoint.state_dict)
    return network.eval()


class _ProbabilityNetwork(EmotionResNet50):
    # A subclass rather than a wrapper module, so parameter names (and ONNX initializer names) stay unprefixed.
    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(super().forward(x), dim=1)


class _Ensemble(torch.nn.Module):
    """The mean of the members' probabilities; parameters are named members.<i>.<key>."""

    def __init__(self, members: list[EmotionResNet50]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def weights_digest(state_dict: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _training_data_sha(checkpoint: Checkpoint, data_path: Path | None) -> str:
    # history.json beside the checkpoint records the file training actually read; hashing --data is the fallback.
    if checkpoint.data_sha256:
        return checkpoint.data_sha256
    history = checkpoint.path.with_name("history.json")
    if history.is_file():
        recorded = json.loads(history.read_text()).get("data_sha256")
        if recorded:
            return str(recorded)
    return sha256_file(data_path) if data_path is not None else "unknown"


def _to_onnx(network: torch.nn.Module, input_size: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="fervid-export-") as work, warnings.catch_warnings():
        traced = Path(work) / "traced.onnx"
        # The TorchScript exporter is deprecated upstream but the dynamo one needs onnxscript, absent here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network, (torch.zeros(1, 1, input_size, input_size),), traced, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            # No folding: BatchNorm stays separate, so every state-dict tensor survives under its own name.
            do_constant_folding=False,
            # Initializers as inputs skips the exporter's merging of equal-valued tensors (which renames them);
            # they are taken out of the inputs again below.
            keep_initializers_as_inputs=True,
            training=torch.onnx.TrainingMode.EVAL,
        )
        model = onnx.load(str(traced))
    weights = {init.name for init in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    return model


def _verification_faces(data_path: Path | None, count: int) -> tuple[NDArray[np.uint8], str]:
    if data_path is not None:
        # PublicTest, never PrivateTest: the reported split stays untouched until evaluation.
        return load_split(data_path, "public").head(count).faces, f"PublicTest faces from {data_path}"
    return np.random.default_rng(0).integers(0, 256, (count, NATIVE_SIZE, NATIVE_SIZE), dtype=np.uint8), "random faces"


def _member_values(members: list[Checkpoint], value: Any) -> str:
    """One provenance value per member, comma-separated (a single network's value is written as is)."""
    return ",".join(str(value(member)) for member in members)


def export_onnx(checkpoints: Path | list[Path], out: Path, *, tta: bool, weights: WeightFormat = "fp16",
                data_path: Path | None = None) -> Path:
    """Exports `checkpoints` (one network, or the ensemble of several) to `out`, verified against PyTorch on real
    faces (random ones when `data_path` is None).

    Raises FervidError (code export_mismatch) and writes nothing when the ONNX probabilities drift past tolerance.
    """
    members, data_sha = _export_members(checkpoints, weights, data_path)
    size = members[0].input_size
    networks = [build_network(member, _ProbabilityNetwork) for member in members]
    network: torch.nn.Module = networks[0] if len(networks) == 1 else _Ensemble(networks).eval()
    model = _to_onnx(network, size)
    try:
        store_weights(model, weights)
    except WeightStorageError as error:
        raise FervidError(str(error), code=EXPORT_FAILED) from error
    metadata = _export_metadata(members, size, weights_digest(network.state_dict()), data_sha, weights, tta)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    _save_verified(model, network, out, size, weights, data_path)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {metadata[NAME_KEY]} {metadata[VERSION_KEY]}, "
          f"{len(members)} network{'s' if len(members) > 1 else ''})", flush=True)
    return out


def _export_members(checkpoints: Path | list[Path], weights: WeightFormat,
                    data_path: Path | None) -> tuple[list[Checkpoint], str]:
    """The checkpoints an export joins, once they are known to make one model, and the sha256 of their training data."""
    paths = [checkpoints] if isinstance(checkpoints, Path) else list(checkpoints)
    if not paths:
        raise FervidError("export needs at least one checkpoint", code=INVALID_REQUEST)
    if weights not in WEIGHT_FORMATS:
        raise FervidError(f"--weights must be one of {WEIGHT_FORMATS}, not {weights!r}", code=INVALID_REQUEST)
    if data_path is not None and not data_path.is_file():
        raise FervidError(f"data file {data_path} not found", code=DATA_NOT_FOUND)
    members = [load_checkpoint(path) for path in paths]
    size = members[0].input_size
    if any(member.input_size != size for member in members):
        raise FervidError(f"ensemble members take different input sizes "
                          f"({_member_values(members, lambda m: m.input_size)}); they must share one",
                          code=INVALID_REQUEST)
    data_shas = {_training_data_sha(member, data_path) for member in members}
    if len(data_shas) > 1:
        raise FervidError(f"ensemble members were trained on different data files ({', '.join(sorted(data_shas))})",
                          code=INVALID_REQUEST)
    return members, data_shas.pop()


def _export_metadata(members: list[Checkpoint], size: int, digest: str, data_sha: str, weights: WeightFormat,
                     tta: bool) -> dict[str, str]:
    """What the exported file says about itself (models.spec's keys): how to feed it and how it was made."""
    preprocess = Preprocess(size=(size, size), channels=1, scale=1 / 255, mean=(PIXEL_MEAN,), std=(PIXEL_STD,),
                            native_size=(NATIVE_SIZE, NATIVE_SIZE))
    metadata = {
        LABELS_KEY: ",".join(EMOTIONS), PREPROCESS_KEY: preprocess.to_json(), OUTPUT_KEY: OUTPUT_NAME,
        NAME_KEY: MODEL_NAME + ("-ferplus" if any(m.config.get("ferplus_weight") for m in members) else ""),
        VERSION_KEY: f"{dt.datetime.now(dt.UTC):%Y%m%d}-{digest[:8]}",
        MEMBERS_KEY: str(len(members)), INIT_KEY: _member_values(members, lambda m: m.init),
        EPOCHS_KEY: _member_values(members, lambda m: m.epochs), INPUT_SIZE_KEY: str(size),
        STEM_KEY: _member_values(members, lambda m: m.stem),
        DATA_SHA_KEY: data_sha, GIT_COMMIT_KEY: git_commit(),
        PUBLIC_ACC_KEY: _member_values(members, lambda m: f"{m.public_acc:.4f}"), WEIGHTS_KEY: weights,
        FERPLUS_WEIGHT_KEY: _member_values(members, lambda m: f"{float(m.config.get('ferplus_weight') or 0):g}"),
    }
    if all(member.public_crowd is not None for member in members):
        metadata[PUBLIC_CROWD_KEY] = _member_values(members, lambda m: f"{m.public_crowd:.4f}")
    if tta:
        metadata[TTA_KEY] = "hflip"
    return metadata


def _save_verified(model: onnx.ModelProto, network: torch.nn.Module, out: Path, size: int, weights: WeightFormat,
                   data_path: Path | None) -> None:
    """Writes `model` to `out` only once ONNX Runtime's probabilities on it match PyTorch's within tolerance."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pending = out.with_name(out.name + ".tmp")
    onnx.save(model, pending)
    try:
        faces, source = _verification_faces(data_path, VERIFY_FACES)
        batch = to_input(faces, size).contiguous()
        with torch.no_grad():
            expected = network(batch).numpy()
        session = ort.InferenceSession(str(pending), providers=["CPUExecutionProvider"])
        (actual,) = session.run(None, {INPUT_NAME: batch.numpy()})
        difference = float(np.abs(np.asarray(actual) - expected).max())
        print(f"verified on {len(faces)} {source}: max |p_onnx - p_torch| = {difference:.2e} "
              f"(limit {TOLERANCE[weights]:.0e}, {weights} weights)", flush=True)
        if not difference <= TOLERANCE[weights]:
            raise FervidError(f"ONNX probabilities differ from PyTorch by {difference:.2e} (limit "
                              f"{TOLERANCE[weights]:.0e}); nothing written to {out}", code=EXPORT_MISMATCH)
        pending.replace(out)
    finally:
        pending.unlink(missing_ok=True)
