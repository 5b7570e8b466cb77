"""Training (`fervid train`): fine-tune (or train from scratch) the ResNet50 emotion classifier on FER-2013 train.

Model selection uses PublicTest only; PrivateTest is never read here.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fervid.errors import INVALID_REQUEST, FervidError
from fervid.files import sha256_file
from fervid.labels import EMOTIONS
from models.network import EmotionResNet50, load_imagenet_state_dict, set_shallow_frozen
from models.training.fer2013 import Split, load_ferplus_shares, load_split
from models.training.quantize import draw_faces
from models.training.warm_start import warm_start_network

# Grey-level normalisation, written into the exported model's preprocess metadata.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25
NATIVE_SIZE = 48  # FER-2013 faces are 48x48


@dataclass
class TrainConfig:
    out_dir: Path
    data: Path  # FER-2013 .npz
    init: str = "scratch"  # scratch | imagenet | model
    imagenet_weights: str | None = None  # path or URL of a torchvision ResNet50 state dict
    init_model: Path | None = None  # init "model": an exported fervid model (any storage, INT8 included) ...
    init_member: int = 0  # ... and which of its networks, for an ensemble
    prior_init: str = ""  # init "model": how the network began and ...
    prior_epochs: int = 0  # ... the epochs it had trained, from the model's metadata (export reports totals)
    input_size: int = 64
    epochs: int = 30
    freeze_epochs: int = 3  # imagenet only: epochs with the shallow stages frozen
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    # >0: each training target blends the FER-2013 label with this weight of the FER+ annotators' vote shares for
    # the same face (a remedy for FER-2013's label noise that keeps its label taxonomy); 0 trains on labels alone.
    ferplus_weight: float = 0.0
    ferplus: Path | None = None  # the FER+ votes (`fer2013_meta.npz`), needed only when ferplus_weight > 0
    seed: int = 2013
    threads: int = 0  # 0: torch's default
    bf16: bool = True
    limit_train: int = 0  # >0: use only the first N training faces (tests, smoke runs)
    limit_eval: int = 0
    resume: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def class_weights(labels: np.ndarray, classes: int) -> Tensor:
    """Square-root inverse frequency: lifts the rare `disgust` class without letting it dominate."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.sqrt(counts.max() / np.maximum(counts, 1.0))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def training_targets(labels: np.ndarray, ferplus_shares: np.ndarray | None, ferplus_weight: float,
                     label_smoothing: float, classes: int) -> Tensor:
    """Per face, the target distribution: the label, blended with FER+ vote shares where the face has any, smoothed."""
    targets = np.eye(classes, dtype=np.float32)[labels]
    if ferplus_shares is not None:
        voted = ferplus_shares.sum(axis=1) > 0
        targets[voted] = (1.0 - ferplus_weight) * targets[voted] + ferplus_weight * ferplus_shares[voted]
    return torch.from_numpy((1.0 - label_smoothing) * targets + label_smoothing / classes)


def weighted_cross_entropy(logits: Tensor, targets: Tensor, class_weight: Tensor) -> Tensor:
    """Cross-entropy against target distributions, each class's term scaled by its weight and the sum normalised by
    the weight the targets carry: for one-hot targets, exactly PyTorch's class-weighted cross-entropy."""
    weighted = targets * class_weight
    return -(weighted * F.log_softmax(logits, dim=1)).sum() / weighted.sum()


def augment(batch: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Random resized crop, flip, rotation, brightness/contrast on a (B, 1, 48, 48) batch in [0, 1]."""
    count = batch.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(count, generator=generator) * (high - low) + low

    scale = torch.sqrt(uniform(0.75, 1.0))  # side fraction of the crop (area 75-100 %)
    aspect = torch.exp(uniform(math.log(0.9), math.log(1.1)))
    angle = uniform(-12.0, 12.0) * math.pi / 180.0
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    shift_x = uniform(-1.0, 1.0) * (1.0 - scale)
    shift_y = uniform(-1.0, 1.0) * (1.0 - scale)
    sx, sy = scale * torch.sqrt(aspect) * flip, scale / torch.sqrt(aspect)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([sx * cos, -sy * sin, shift_x], 1), torch.stack([sx * sin, sy * cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, [count, 1, size, size], align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(0.7, 1.3).view(-1, 1, 1, 1)
    brightness = uniform(-0.15, 0.15).view(-1, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def to_input(faces: np.ndarray | Tensor, size: int) -> Tensor:
    """Evaluation preprocessing: the same resize and normalisation the runtime applies."""
    batch = torch.as_tensor(faces, dtype=torch.float32).unsqueeze(1) / 255.0
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return normalize(batch)


def normalize(batch: Tensor) -> Tensor:
    return ((batch - PIXEL_MEAN) / PIXEL_STD).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_probs(network: nn.Module, faces: np.ndarray, size: int, tta: bool, bf16: bool,
                  batch_size: int = 256) -> np.ndarray:
    network.eval()
    out = []
    for start in range(0, len(faces), batch_size):
        batch = to_input(faces[start : start + batch_size], size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            probs = F.softmax(network(batch).float(), dim=1)
            if tta:
                probs = (probs + F.softmax(network(torch.flip(batch, dims=[3])).float(), dim=1)) / 2
        out.append(probs.float().numpy())
    return np.concatenate(out)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in network.parameters():
        # Weight decay on BN scales and biases only hurts; the usual exclusion.
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=0.9, nesterov=True,
    )


def load_imagenet_weights(source: str) -> dict[str, Tensor]:
    if source.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=True)
    return torch.load(source, map_location="cpu", weights_only=True)


# Training faces whose statistics restore the BatchNorms an INT8 model folded away (`--init model`).
WARM_START_FACES = 2048


def build_network(config: TrainConfig, train_faces: np.ndarray | None = None,
                  data_sha256: str = "") -> EmotionResNet50:
    """The network training starts from; for `--init model` also records its origin in `config`."""
    network = EmotionResNet50(num_classes=len(EMOTIONS), in_channels=1)
    if config.init == "model":
        if config.init_model is None or train_faces is None:
            raise SystemExit("--init model needs --init-model PATH (a `fervid export` or `fervid quantize` output)")
        calibration = to_input(draw_faces(train_faces, WARM_START_FACES), config.input_size).contiguous()
        network, source = warm_start_network(config.init_model, config.init_member, config.input_size, data_sha256,
                                             calibration)
        config.prior_init, config.prior_epochs = source.init, source.epochs
        print(f"warm start: network {config.init_member} of {config.init_model} ({source.init}, "
              f"{source.epochs} epochs)", flush=True)
    elif config.init == "imagenet":
        if not config.imagenet_weights:
            raise SystemExit("--init imagenet needs --imagenet-weights PATH_OR_URL (a torchvision ResNet50 state dict)")
        fresh = load_imagenet_state_dict(network, load_imagenet_weights(config.imagenet_weights))
        print(f"imagenet start: {len(fresh)} tensors keep fresh values ({', '.join(fresh[:4])}...)", flush=True)
    elif config.init != "scratch":
        raise SystemExit(f"--init must be scratch, imagenet or model, not {config.init!r}")
    return network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def top1(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def save_checkpoint(path: Path, network: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                    epoch: int, step: int, best: float) -> None:
    payload = {
        "network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
        "best_public": best, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a torn checkpoint


def train(config: TrainConfig) -> Path:
    """Trains, checkpointing every epoch; returns the path of the best (PublicTest) checkpoint."""
    if config.ferplus_weight > 0 and config.ferplus is None:
        raise FervidError("a FER+ weight needs the FER+ votes file (fer2013_meta.npz)", code=INVALID_REQUEST)
    if config.threads:
        torch.set_num_threads(config.threads)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    train_split: Split = load_split(config.data, "train")
    public_split: Split = load_split(config.data, "public")
    if config.limit_train:
        train_split = train_split.head(config.limit_train)
    if config.limit_eval:
        public_split = public_split.head(config.limit_eval)

    last_path, best_path = config.out_dir / "last.pt", config.out_dir / "best.pt"
    resumed = torch.load(last_path, map_location="cpu", weights_only=False) \
        if config.resume and last_path.exists() else None
    data_sha = sha256_file(config.data)
    torch.manual_seed(config.seed)
    start_acc: float | None = None
    if resumed is None:
        network = build_network(config, train_split.faces, data_sha)
        if config.init == "model":  # the baseline the continuation has to beat
            start_acc = top1(predict_probs(network, public_split.faces, config.input_size, False, config.bf16),
                             public_split.labels)
            print(json.dumps({"epoch": 0, "public_acc": round(start_acc, 4)}), flush=True)
    else:
        # The checkpoint's weights replace whatever the run started from: no warm start or download again.
        network = build_network(replace(config, init="scratch"))
        config.prior_init = resumed["config"].get("prior_init", "")
        config.prior_epochs = int(resumed["config"].get("prior_epochs", 0))
    optimizer = build_optimizer(network, config)
    ferplus_shares = load_ferplus_shares(config.ferplus, "train")[: len(train_split)] \
        if config.ferplus_weight > 0 and config.ferplus is not None else None
    targets = training_targets(train_split.labels, ferplus_shares, config.ferplus_weight, config.label_smoothing,
                               len(EMOTIONS))
    weight = class_weights(train_split.labels, len(EMOTIONS))
    steps_per_epoch = len(train_split) // config.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"batch size {config.batch_size} exceeds the {len(train_split)} training faces")

    start_epoch, step, best = 0, 0, -1.0
    if start_acc is not None:
        # best.pt starts as the network the continuation began from, so it never hands back a worse one (and
        # `--epochs 0` turns a network of an exported file into a checkpoint).
        best = start_acc
        save_checkpoint(best_path, network, optimizer, config, -1, step, best)
    if resumed is not None:
        network.load_state_dict(resumed["network"])
        optimizer.load_state_dict(resumed["optimizer"])
        start_epoch, step, best = resumed["epoch"] + 1, resumed["step"], resumed["best_public"]
        config.history = resumed["config"].get("history", [])
        print(f"resumed from {last_path} after epoch {resumed['epoch'] + 1}", flush=True)

    faces = torch.from_numpy(train_split.faces).unsqueeze(1)
    labels = torch.from_numpy(train_split.labels)
    for epoch in range(start_epoch, config.epochs):
        # Per-epoch seeds from (seed, epoch) for the data order, augmentation and dropout (the global RNG): a resumed
        # run draws exactly what an unbroken one would.
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        torch.manual_seed(config.seed * 1000 + epoch + 1)
        if config.init == "imagenet":
            set_shallow_frozen(network, frozen=epoch < config.freeze_epochs)
        order = torch.randperm(len(labels), generator=generator)
        network.train()
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for batch_index in range(steps_per_epoch):
            index = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            batch = normalize(augment(faces[index].float() / 255.0, config.input_size, generator))
            target = labels[index]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, steps_per_epoch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                logits = network(batch)
            loss = weighted_cross_entropy(logits.float(), targets[index], weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(target)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(target)
        train_seconds = time.perf_counter() - started
        public_acc = top1(predict_probs(network, public_split.faces, config.input_size, False, config.bf16),
                          public_split.labels)
        record = {
            "epoch": epoch + 1, "train_loss": round(loss_sum / seen, 4), "train_acc": round(correct / seen, 4),
            "public_acc": round(public_acc, 4), "epoch_seconds": round(train_seconds, 1),
            "images_per_second": round(seen / train_seconds, 1), "lr": round(optimizer.param_groups[0]["lr"], 6),
        }
        config.history.append(record)
        print(json.dumps(record), flush=True)
        if public_acc > best:
            best = public_acc
            save_checkpoint(best_path, network, optimizer, config, epoch, step, best)
        save_checkpoint(last_path, network, optimizer, config, epoch, step, best)
        (config.out_dir / "history.json").write_text(json.dumps(
            {"data_sha256": data_sha, "best_public": best, "history": config.history}, indent=1))
    return best_path
