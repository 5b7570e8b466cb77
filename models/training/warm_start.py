"""Rebuilds a trainable EmotionResNet50 from an exported fervid model, so a shipped network can train further after
its training run (and its checkpoints) are gone.

Any file `fervid export` or `fervid quantize` wrote will do: fp32, fp16 or int8-scaled storage, an INT8 QDQ graph,
one network or member N of an ensemble. Quantization folds each BatchNorm into the convolution before it
(W' = W * gamma / sigma, b' = beta - mu * gamma / sigma), which loses the statistics that training-mode BatchNorm
needs. They are measured again: with each BatchNorm set to "add b'", the network computes exactly what the file
does; the per-channel mean and variance of each convolution's output over real training faces then give a
BatchNorm that still computes the same function in eval mode and normalises as the original did in training mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from fervid.errors import INVALID_MODEL, INVALID_REQUEST, FervidError
from fervid.labels import EMOTIONS
from models.graph_rewrites import float_graph
from models.spec import (
    DATA_SHA_KEY,
    EPOCHS_KEY,
    INIT_KEY,
    LEGACY_STEM,
    MEMBERS_KEY,
    PREPROCESS_KEY,
    STEM_KEY,
    STEMS,
    Preprocess,
)
from models.training.network import EmotionResNet50

# Names ONNX Runtime's quantizer gives a folded weight or bias and the constant a DequantizeLinear yields (once per
# quantization: a file re-quantized from an INT8 one has it twice); the state-dict key sits in between.
_ONNX_NAME = re.compile(r"^(?:ConvBnFusion_(?:W|BN_B)_)?(?P<key>.*?)(?:_DequantizeLinear_Output)*$")
_ENSEMBLE_MEMBER = re.compile(r"^members\.(\d+)\.")


def _state_dict_tensors(model: onnx.ModelProto) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for init in model.graph.initializer:
        match = _ONNX_NAME.match(init.name)
        if match is not None and init.data_type == onnx.TensorProto.FLOAT:
            tensors[match["key"]] = torch.from_numpy(numpy_helper.to_array(init).copy())
    return tensors


def _network_prefix(found: dict[str, Tensor], members: int, member: int) -> str:
    """The prefix of network `member`'s state-dict keys. A network cut out of an ensemble (`fervid quantize
    --member N`) is alone in its file but keeps the ensemble's name for it."""
    if members > 1:
        return f"members.{member}."
    cut = {match[1] for key in found if (match := _ENSEMBLE_MEMBER.match(key))}
    return f"members.{cut.pop()}." if len(cut) == 1 else ""


@dataclass(frozen=True)
class ExportedNetwork:
    state_dict: dict[str, Tensor]
    folded: list[str]  # BatchNorms whose statistics were folded away: their `bias` holds b', the rest is fresh
    input_size: int
    stem: str  # models.spec.STEMS, from the file's metadata (absent: the imagenet stem of older exports)
    init: str  # the network's own provenance, from the file's metadata
    epochs: int
    data_sha256: str | None


def exported_member(path: Path, member: int) -> ExportedNetwork:
    """Network `member` of the exported model at `path`, as stored."""
    try:
        model = float_graph(onnx.load(str(path)))
    except Exception as error:  # onnx raises protobuf's DecodeError and others for a foreign file
        raise FervidError(f"{path} is not a readable ONNX model ({error})", code=INVALID_MODEL) from error
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if PREPROCESS_KEY not in meta:
        raise FervidError(f"{path} has no {PREPROCESS_KEY} metadata; is it a `fervid export`?", code=INVALID_MODEL)
    members = int(meta.get(MEMBERS_KEY, "1"))
    if not 0 <= member < members:
        raise FervidError(f"{path} holds {members} network(s); --init-member must be 0..{members - 1}",
                          code=INVALID_REQUEST)
    stems = meta.get(STEM_KEY, ",".join([LEGACY_STEM] * members)).split(",")
    stem = stems[member] if len(stems) == members else ""
    if stem not in STEMS:
        raise FervidError(f"{path}: {STEM_KEY} {meta.get(STEM_KEY)!r} names no stem of {STEMS} for network {member}",
                          code=INVALID_MODEL)
    found = _state_dict_tensors(model)
    prefix = _network_prefix(found, members, member)
    network = EmotionResNet50(num_classes=len(EMOTIONS), in_channels=1, stem=stem)
    state = network.state_dict()
    folded: list[str] = []
    for name, module in network.named_modules():
        if isinstance(module, nn.BatchNorm2d) and f"{prefix}{name}.running_mean" not in found:
            folded.append(name)
    missing = []
    for key in state:
        module_name, tensor = key.rsplit(".", 1)
        if key.endswith("num_batches_tracked") or (module_name in folded and tensor != "bias"):
            continue  # the step counter is not exported; a folded BatchNorm keeps only its bias b'
        value = found.get(prefix + key)
        if value is None or value.shape != state[key].shape:
            missing.append(key)
        else:
            state[key] = value
    if missing:
        raise FervidError(f"{path} lacks {len(missing)} ResNet50 weights of network {member} "
                          f"(first: {', '.join(missing[:3])})", code=INVALID_MODEL)
    size = Preprocess.from_json(meta[PREPROCESS_KEY]).size
    if size[0] != size[1]:
        raise FervidError(f"{path} takes {size[0]}x{size[1]} inputs; training needs square ones", code=INVALID_MODEL)
    inits, epochs = meta.get(INIT_KEY, "").split(","), meta.get(EPOCHS_KEY, "").split(",")
    return ExportedNetwork(
        state_dict=state, folded=folded, input_size=size[0], stem=stem,
        init=inits[member] if len(inits) == members else "unknown",
        epochs=int(epochs[member]) if len(epochs) == members and epochs[member].isdigit() else 0,
        data_sha256=None if meta.get(DATA_SHA_KEY, "unknown") == "unknown" else meta[DATA_SHA_KEY])


@torch.no_grad()
def unfold_batchnorm(network: EmotionResNet50, folded: list[str], faces: Tensor, batch_size: int = 128) -> None:
    """Gives each BatchNorm in `folded` (now computing x + b') the statistics of its input over `faces`
    (preprocessed inputs), keeping the function the network computes in eval mode."""
    modules = dict(network.named_modules())
    sums: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].double()
            sums[name] = sums.get(name, 0) + x.sum(dim=(0, 2, 3))
            squares[name] = squares.get(name, 0) + (x * x).sum(dim=(0, 2, 3))
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return hook

    for name in folded:
        batchnorm = modules[name]
        assert isinstance(batchnorm, nn.BatchNorm2d)
        batchnorm.weight.fill_(1.0)
        batchnorm.running_mean.zero_()  # type: ignore[union-attr]
        batchnorm.running_var.fill_(1.0 - batchnorm.eps)  # type: ignore[union-attr]  # (x - 0) / 1 * 1 + b'
    handles = [modules[name].register_forward_pre_hook(record(name)) for name in folded]
    try:
        network.eval()
        for start in range(0, len(faces), batch_size):
            network(faces[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    for name in folded:
        batchnorm = modules[name]
        assert isinstance(batchnorm, nn.BatchNorm2d)
        mean = sums[name] / counts[name]
        variance = (squares[name] / counts[name] - mean * mean).clamp_min(0.0)
        scale = torch.sqrt(variance + batchnorm.eps)
        # eval: (x - mean) / scale * scale + (mean + b') == x + b'
        batchnorm.bias.add_(mean.float())
        batchnorm.weight.copy_(scale.float())
        batchnorm.running_mean.copy_(mean.float())  # type: ignore[union-attr]
        batchnorm.running_var.copy_(variance.float())  # type: ignore[union-attr]


def warm_start_network(path: Path, member: int, input_size: int, data_sha256: str,
                       calibration_faces: Tensor) -> tuple[EmotionResNet50, ExportedNetwork]:
    """Network `member` of the exported model at `path`, trainable, BatchNorm statistics restored from
    `calibration_faces` (preprocessed training faces) where the file had folded them away; and what the file
    says of it."""
    source = exported_member(path, member)
    if source.input_size != input_size:
        raise FervidError(f"{path} takes {source.input_size}x{source.input_size} faces; train it with "
                          f"--input-size {source.input_size}", code=INVALID_REQUEST)
    if source.data_sha256 not in (None, data_sha256):
        raise FervidError(f"{path} was trained on another data file (sha256 {source.data_sha256[:12]}...)",
                          code=INVALID_REQUEST)
    network = EmotionResNet50(num_classes=len(EMOTIONS), in_channels=1, stem=source.stem)
    network.load_state_dict(source.state_dict)
    if source.folded:
        unfold_batchnorm(network, source.folded, calibration_faces)
    return network, source

