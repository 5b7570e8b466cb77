"""`fervid export`: a training checkpoint -> the self-describing ONNX artifact the runtime loads.

The graph takes preprocessed faces (batch, 1, S, S) named `faces` and returns softmax probabilities named `probs`.
Initializer names equal the PyTorch state-dict keys (the torch-cuda backend loads weights by those names).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

from fervid.errors import FervidError
from fervid.files import sha256_file
from fervid.labels import EMOTIONS
from models.classifier import (
    LABELS_KEY,
    NAME_KEY,
    OUTPUT_KEY,
    PREPROCESS_KEY,
    TTA_KEY,
    VERSION_KEY,
    Preprocess,
)
from models.fer2013 import DEFAULT_DATA_PATH, load_split
from models.network import EmotionResNet50
from models.train import NATIVE_SIZE, PIXEL_MEAN, PIXEL_STD, to_input

MODEL_NAME = "fervid-resnet50-fer2013"
OPSET = 17
INPUT_NAME = "faces"
OUTPUT_NAME = "probs"
FP32_SUFFIX = "__fp32"  # the Cast output that feeds consumers of an fp16-stored initializer
WeightFormat = Literal["fp16", "fp32"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("fp16", "fp32")
# Max |p_onnx - p_torch| accepted when verifying an export; fp16 storage rounds every weight.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-3}
VERIFY_FACES = 64

# Provenance written beside the runtime keys of models.classifier.
INIT_KEY = "fervid.init"
EPOCHS_KEY = "fervid.epochs"  # epochs trained when this checkpoint was saved
INPUT_SIZE_KEY = "fervid.input_size"
DATA_SHA_KEY = "fervid.data_sha256"
GIT_COMMIT_KEY = "fervid.git_commit"
PUBLIC_ACC_KEY = "fervid.public_acc"  # PublicTest top-1 recorded by training (no TTA)
WEIGHTS_KEY = "fervid.weights"  # fp16 | fp32: how the initializers are stored (compute is fp32 either way)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state_dict: dict[str, Tensor]
    config: dict[str, Any]
    epoch: int  # zero-based epoch the checkpoint was saved after
    best_public: float

    @property
    def input_size(self) -> int:
        return int(self.config.get("input_size", 64))


def load_checkpoint(path: Path) -> Checkpoint:
    """Reads a `fervid train` checkpoint (best.pt / last.pt)."""
    if not path.is_file():
        raise FervidError(f"checkpoint {path} not found; train one with `fervid train`", code="checkpoint_not_found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a torn or foreign file
        raise FervidError(f"{path} is not a readable checkpoint ({error})", code="invalid_checkpoint") from error
    if not isinstance(state, dict) or "network" not in state:
        raise FervidError(f"{path} has no 'network' state dict; is it a `fervid train` checkpoint?",
                          code="invalid_checkpoint")
    return Checkpoint(path=path, state_dict=state["network"], config=dict(state.get("config", {})),
                      epoch=int(state.get("epoch", -1)), best_public=float(state.get("best_public", float("nan"))))


def build_network(checkpoint: Checkpoint, network_type: type[EmotionResNet50] = EmotionResNet50) -> EmotionResNet50:
    """The checkpoint's network in eval mode, fp32, ready for inference."""
    network = network_type(num_classes=len(EMOTIONS), in_channels=1)
    network.load_state_dict(checkpoint.state_dict)
    return network.eval()


class _ProbabilityNetwork(EmotionResNet50):
    # A subclass rather than a wrapper module, so parameter names (and ONNX initializer names) stay unprefixed.
    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(super().forward(x), dim=1)


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
    history = checkpoint.path.with_name("history.json")
    if history.is_file():
        recorded = json.loads(history.read_text()).get("data_sha256")
        if recorded:
            return str(recorded)
    return sha256_file(data_path) if data_path is not None else "unknown"


def _to_onnx(network: EmotionResNet50, input_size: int) -> onnx.ModelProto:
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


def store_weights_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Stores every float32 initializer as float16 (same name) followed by a Cast back to float32.

    The file halves in size; ONNX Runtime folds the Casts at load time, so compute stays fp32.
    """
    graph = model.graph
    casts = []
    renamed: dict[str, str] = {}
    for index, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.all(np.isfinite(half)):
            raise FervidError(f"initializer {init.name} overflows float16; export with --weights fp32",
                              code="export_failed")
        graph.initializer[index].CopyFrom(numpy_helper.from_array(half, init.name))
        renamed[init.name] = init.name + FP32_SUFFIX
        casts.append(helper.make_node("Cast", [init.name], [renamed[init.name]], to=TensorProto.FLOAT,
                                      name=f"{init.name}{FP32_SUFFIX}_cast"))
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def restore_fp32_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undoes `store_weights_fp16` (exactly: every fp16 value is representable in fp32); other models pass as is."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    restored: dict[str, str] = {}
    kept = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Cast" and node.input else ""
        if (source in initializers and initializers[source].data_type == TensorProto.FLOAT16
                and node.output[0] == source + FP32_SUFFIX):
            restored[node.output[0]] = source
            continue
        kept.append(node)
    for source in restored.values():
        initializers[source].CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(initializers[source]).astype(np.float32), source))
    for node in kept:
        for position, name in enumerate(node.input):
            if name in restored:
                node.input[position] = restored[name]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _verification_faces(data_path: Path | None, count: int) -> tuple[NDArray[np.uint8], str]:
    if data_path is not None:
        # PublicTest, never PrivateTest: the reported split stays untouched until evaluation.
        return load_split(data_path, "public").head(count).faces, f"PublicTest faces from {data_path}"
    return np.random.default_rng(0).integers(0, 256, (count, NATIVE_SIZE, NATIVE_SIZE), dtype=np.uint8), "random faces"


def export_onnx(checkpoint: Path, out: Path, *, tta: bool, weights: WeightFormat = "fp16",
                data_path: Path | None = None) -> Path:
    """Exports `checkpoint` to `out`, verified against PyTorch on real faces (random ones when `data_path` is None).

    Raises FervidError (code export_mismatch) and writes nothing when the ONNX probabilities drift past tolerance.
    """
    if weights not in WEIGHT_FORMATS:
        raise FervidError(f"--weights must be one of {WEIGHT_FORMATS}, not {weights!r}", code="invalid_request")
    if data_path is not None and not data_path.is_file():
        raise FervidError(f"data file {data_path} not found", code="data_not_found")
    loaded = load_checkpoint(checkpoint)
    size = loaded.input_size
    network = build_network(loaded, _ProbabilityNetwork)
    model = _to_onnx(network, size)
    if weights == "fp16":
        model = store_weights_fp16(model)

    digest = weights_digest(loaded.state_dict)
    preprocess = Preprocess(size=(size, size), channels=1, scale=1 / 255, mean=(PIXEL_MEAN,), std=(PIXEL_STD,),
                            native_size=(NATIVE_SIZE, NATIVE_SIZE))
    metadata = {
        LABELS_KEY: ",".join(EMOTIONS), PREPROCESS_KEY: preprocess.to_json(), OUTPUT_KEY: OUTPUT_NAME,
        NAME_KEY: MODEL_NAME, VERSION_KEY: f"{dt.datetime.now(dt.UTC):%Y%m%d}-{digest[:8]}",
        INIT_KEY: str(loaded.config.get("init", "unknown")), EPOCHS_KEY: str(loaded.epoch + 1),
        INPUT_SIZE_KEY: str(size), DATA_SHA_KEY: _training_data_sha(loaded, data_path), GIT_COMMIT_KEY: git_commit(),
        PUBLIC_ACC_KEY: f"{loaded.best_public:.4f}", WEIGHTS_KEY: weights,
    }
    if tta:
        metadata[TTA_KEY] = "hflip"
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)

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
                              f"{TOLERANCE[weights]:.0e}); nothing written to {out}", code="export_mismatch")
        pending.replace(out)
    finally:
        pending.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {metadata[NAME_KEY]} {metadata[VERSION_KEY]})", flush=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a `fervid train` checkpoint (best.pt)")
    parser.add_argument("--out", type=Path, default=Path("models/fervid-emotion.onnx"))
    parser.add_argument("--tta", action="store_true", help="tell the runtime to average with the mirrored face")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="fp16",
                        help="how weights are stored in the file (compute is fp32 either way)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"FER-2013 .npz for verification (default {DEFAULT_DATA_PATH} when present, "
                             "else random faces)")


def run(args: argparse.Namespace) -> int:
    data_path = args.data
    if data_path is None and DEFAULT_DATA_PATH.is_file():
        data_path = DEFAULT_DATA_PATH
    export_onnx(args.checkpoint, args.out, tta=args.tta, weights=args.weights, data_path=data_path)
    return 0
