"""Training (`fervid train`): fine-tune (or train from scratch) the ResNet50 emotion classifier on FER-2013 train,
on the CPU or a CUDA GPU.

Model selection uses PublicTest only; PrivateTest is never read here.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
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
from models.cpu_features import read_cpu_features
from models.spec import LEGACY_STEM, STEMS
from models.training.augment import (
    AUGMENTATIONS,
    affine_augment,
    mix_batch,
    pad_crop_augment,
    random_erase,
    tencrop_views,
)
from models.training.distill import OnnxTeacher, distillation_loss
from models.training.ema import WeightAverage
from models.training.fer2013 import NO_MAJORITY, Split, load_crowd_majority, load_ferplus_shares, load_split
from models.training.network import EmotionResNet50, load_imagenet_state_dict, set_shallow_frozen
from models.training.precision import choose_precision
from models.training.quantize import draw_faces
from models.training.warm_start import ExportedNetwork, exported_member, warm_start_network

# Grey-level normalisation, written into the exported model's preprocess metadata.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25
NATIVE_SIZE = 48  # FER-2013 faces are 48x48


@dataclass(frozen=True)
class StemRecipe:
    """What a run on this stem does unless told otherwise."""

    input_size: int
    augmentation: str  # models.training.augment.AUGMENTATIONS
    erase_prob: float
    ema_decay: float


# The small stems train at the native 48 px on CIFAR-style crops (pad 4, random 48 crop: the face's own pixels,
# shifted by up to 4 px, never resampled), with random erasing and an EMA of the weights, as the from-scratch
# FER-2013 results of 72-73 % do; which of these earns its place is for the PublicTest ablation to say. The imagenet
# stem keeps today's recipe, which the shipped networks trained with.
STEM_RECIPES = {
    "small": StemRecipe(input_size=NATIVE_SIZE, augmentation="pad-crop", erase_prob=0.5, ema_decay=0.999),
    "small-pool": StemRecipe(input_size=NATIVE_SIZE, augmentation="pad-crop", erase_prob=0.5, ema_decay=0.999),
    "imagenet": StemRecipe(input_size=64, augmentation="affine", erase_prob=0.0, ema_decay=0.0),
}
# The stem a run from scratch gets when not told.
SCRATCH_STEM = "small"
# Fields a resumed run takes from its checkpoint: a run's network and recipe do not change halfway.
RESUMED_FIELDS = ("stem", "input_size", "augmentation", "crop_padding", "erase_prob", "ema_decay", "select",
                  "min_public_acc")
# How a run picks its best epoch on PublicTest: FER-2013 top-1, or the most agreement with the FER+ crowd majority
# among the epochs whose top-1 stays at or above a floor (by default the `fer` library's 65.4 %).
SELECTIONS = ("top1", "crowd")
FER_LIBRARY_PUBLIC_ACC = 0.654


@dataclass
class TrainConfig:
    out_dir: Path
    data: Path  # FER-2013 .npz
    init: str = "scratch"  # scratch | imagenet | model
    # models.spec.STEMS; "": the init's (scratch: SCRATCH_STEM, imagenet: imagenet, model: the file's)
    stem: str = ""
    imagenet_weights: str | None = None  # path or URL of a torchvision ResNet50 state dict
    init_model: Path | None = None  # init "model": an exported fervid model (any storage, INT8 included) ...
    init_member: int = 0  # ... and which of its networks, for an ensemble
    prior_init: str = ""  # init "model": how the network began and ...
    prior_epochs: int = 0  # ... the epochs it had trained, from the model's metadata (export reports totals)
    input_size: int = 0  # 0: the stem's (STEM_RECIPES), or for init "model" the file's
    augmentation: str = ""  # affine | pad-crop; "": the stem's
    crop_padding: int = 4  # pad-crop: pixels of (repeated) edge around the face before the random crop
    erase_prob: float | None = None  # random erasing, per face; None: the stem's
    mixup_alpha: float = 0.0  # >0: mixup with Beta(alpha, alpha) proportions
    cutmix_alpha: float = 0.0  # >0: CutMix likewise (with mixup also on, each batch draws one of the two)
    epochs: int = 30
    freeze_epochs: int = 3  # imagenet only: epochs with the shallow stages frozen
    batch_size: int = 64
    base_lr: float = 0.2  # SGD Nesterov's peak rate at batch 256; a run steps at base_lr * batch_size / 256
    weight_decay: float = 5e-4  # on convolution and linear weights only, never on BatchNorm or biases
    warmup_epochs: float = 1.0  # linear warm-up, then cosine to zero
    label_smoothing: float = 0.1
    class_weighted: bool = True  # square-root inverse-frequency class weights in the loss
    ema_decay: float | None = None  # >0: evaluate and keep an EMA of the weights as the candidate; None: the stem's
    teacher: Path | None = None  # an exported model to distil from
    distill_weight: float = 0.5  # the loss: (1 - w) * cross-entropy + w * distillation
    distill_temperature: float = 4.0
    # >0: each training target blends the FER-2013 label with this weight of the FER+ annotators' vote shares for
    # the same face (a remedy for FER-2013's label noise that keeps its label taxonomy); 0 trains on labels alone.
    ferplus_weight: float = 0.0
    ferplus: Path | None = None  # the FER+ votes (`fer2013_meta.npz`): for ferplus_weight > 0 and the crowd figure
    select: str = "top1"  # SELECTIONS
    min_public_acc: float = FER_LIBRARY_PUBLIC_ACC  # select "crowd": the PublicTest top-1 an epoch must keep
    seed: int = 2013
    threads: int = 0  # 0: torch's default
    device: str = "cpu"  # cpu | cuda (the training set then lives on the GPU as uint8, augmented there)
    precision: str = "auto"  # auto | bf16 | fp32 (models.training.precision.choose_precision)
    channels_last: bool = True
    compile: bool = False  # torch.compile the training step's network
    progress_every: int = 50  # batches between progress lines (0: one line per epoch only)
    limit_train: int = 0  # >0: use only the first N training faces (tests, smoke runs)
    limit_eval: int = 0
    resume: bool = False
    keep_epochs: bool = False  # also keep each epoch's checkpoint (epoch-NNN.pt), to choose among them afterwards
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_recipe(config: TrainConfig, exported: ExportedNetwork | None = None) -> TrainConfig:
    """`config` with its stem, input size and stem-dependent options decided: from the init (and, for init "model",
    the exported network's own stem and input size), then the stem's recipe."""
    stem = config.stem
    if config.init == "imagenet":
        if stem not in ("", "imagenet"):
            raise FervidError(f"--init imagenet loads torchvision's weights, whose stem is imagenet, not {stem!r}",
                              code=INVALID_REQUEST)
        stem = "imagenet"
    elif config.init == "model" and exported is not None:
        if stem not in ("", exported.stem):
            raise FervidError(f"{config.init_model} holds a network with the {exported.stem} stem, not {stem!r}; "
                              "leave --stem out", code=INVALID_REQUEST)
        stem = exported.stem
    stem = stem or SCRATCH_STEM
    if stem not in STEMS:
        raise FervidError(f"--stem must be one of {', '.join(STEMS)}, not {stem!r}", code=INVALID_REQUEST)
    recipe = STEM_RECIPES[stem]
    input_size = config.input_size or (exported.input_size if exported is not None else recipe.input_size)
    augmentation = config.augmentation or recipe.augmentation
    if augmentation not in AUGMENTATIONS:
        raise FervidError(f"--augmentation must be one of {', '.join(AUGMENTATIONS)}, not {augmentation!r}",
                          code=INVALID_REQUEST)
    return replace(config, stem=stem, input_size=input_size, augmentation=augmentation,
                   erase_prob=recipe.erase_prob if config.erase_prob is None else config.erase_prob,
                   ema_decay=recipe.ema_decay if config.ema_decay is None else config.ema_decay)


def peak_lr(config: TrainConfig) -> float:
    """The learning rate scaled to the batch (Goyal et al. 2017): base_lr at 256 faces a step."""
    return config.base_lr * config.batch_size / 256


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
                  batch_size: int = 256, *, tencrop: bool = False, device: torch.device | None = None) -> np.ndarray:
    """Probabilities of (N, 48, 48) faces: of the face alone, averaged with its mirror (`tta`), or over ten views
    (`tencrop`: five shifts, each mirrored; ten passes a face)."""
    network.eval()
    device = device or torch.device("cpu")
    out = []
    for start in range(0, len(faces), batch_size):
        batch = to_input(faces[start : start + batch_size], size).to(device)
        views = tencrop_views(batch) if tencrop else [batch, torch.flip(batch, dims=[3])] if tta else [batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            probs = torch.stack([F.softmax(network(view).float(), dim=1) for view in views]).mean(dim=0)
        out.append(probs.float().cpu().numpy())
    return np.concatenate(out)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    total = config.epochs * steps_per_epoch
    peak = peak_lr(config)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in network.parameters():
        # Weight decay on BN scales and biases only hurts; the usual exclusion.
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr(config), momentum=0.9, nesterov=True,
    )


def load_imagenet_weights(source: str) -> dict[str, Tensor]:
    if source.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=True)
    return torch.load(source, map_location="cpu", weights_only=True)


# Training faces whose statistics restore the BatchNorms an INT8 model folded away (`--init model`).
WARM_START_FACES = 2048


def build_network(config: TrainConfig, train_faces: np.ndarray | None = None,
                  data_sha256: str = "") -> EmotionResNet50:
    """The network training starts from (`config` resolved); for `--init model` also records its origin in `config`."""
    network = EmotionResNet50(num_classes=len(EMOTIONS), in_channels=1, stem=config.stem)
    if config.init == "model":
        if config.init_model is None or train_faces is None:
            raise SystemExit("--init model needs --init-model PATH (a `fervid export` or `fervid quantize` output)")
        calibration = to_input(draw_faces(train_faces, WARM_START_FACES), config.input_size).contiguous()
        network, source = warm_start_network(config.init_model, config.init_member, config.input_size, data_sha256,
                                             calibration)
        config.prior_init, config.prior_epochs = source.init, source.epochs
        print(f"warm start: network {config.init_member} of {config.init_model} ({source.init}, "
              f"{source.epochs} epochs, {source.stem} stem)", flush=True)
    elif config.init == "imagenet":
        if not config.imagenet_weights:
            raise SystemExit("--init imagenet needs --imagenet-weights PATH_OR_URL (a torchvision ResNet50 state dict)")
        fresh = load_imagenet_state_dict(network, load_imagenet_weights(config.imagenet_weights))
        print(f"imagenet start: {len(fresh)} tensors keep fresh values ({', '.join(fresh[:4])}...)", flush=True)
    elif config.init != "scratch":
        raise SystemExit(f"--init must be scratch, imagenet or model, not {config.init!r}")
    return network


def top1(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def crowd_agreement(probs: np.ndarray, majority: np.ndarray) -> float:
    """Top-1 against the FER+ crowd majority, on the faces that have one."""
    clear = majority != NO_MAJORITY
    return top1(probs[clear], majority[clear])


@dataclass(frozen=True)
class Standing:
    """A network's PublicTest figures and the score its run ranks epochs by (higher is better)."""

    public_acc: float
    public_crowd: float | None  # None: no FER+ votes given
    score: float


def standing(config: TrainConfig, public_acc: float, public_crowd: float | None) -> Standing:
    if config.select == "top1":
        return Standing(public_acc, public_crowd, public_acc)
    assert public_crowd is not None  # train() refuses select "crowd" without the votes
    # An epoch under the floor ranks below every epoch above it (scores < 0), and among its kind by top-1, so a
    # run whose epochs all miss the floor still hands back its most accurate one.
    score = public_crowd if public_acc >= config.min_public_acc else public_acc - 1.0
    return Standing(public_acc, public_crowd, score)


def save_checkpoint(path: Path, network: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                    epoch: int, step: int, best: Standing, own: Standing, ema: WeightAverage | None = None) -> None:
    """`network` in the checkpoint is the candidate (what export and evaluation read): the EMA's weights when the run
    keeps one, whose raw training weights then travel beside it for `--resume`. `own` is that network's PublicTest
    standing (what export records), `best` the run's best so far (what `--resume` goes on from)."""
    payload: dict[str, Any] = {
        "network": (network if ema is None else ema.network).state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": epoch, "step": step, "best_public": best.public_acc, "best_public_crowd": best.public_crowd,
        "best_score": best.score, "public_acc": own.public_acc, "public_crowd": own.public_crowd,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    if ema is not None:
        payload["training_network"] = network.state_dict()
        payload["ema_updates"] = ema.updates
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a torn checkpoint


def _figures(figures: Standing) -> dict[str, float]:
    """A standing as a history record's fields: PublicTest top-1 and, with the FER+ votes, the crowd agreement."""
    record = {"public_acc": round(figures.public_acc, 4)}
    if figures.public_crowd is not None:
        record["public_crowd"] = round(figures.public_crowd, 4)
    return record


def _clock(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(max(seconds, 0.0))))


def _resumed_config(config: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """`config` with the network and recipe of the run it resumes; checkpoints from before stems were a choice hold
    the imagenet stem and its recipe."""
    kept = {key: saved[key] for key in RESUMED_FIELDS if key in saved}
    return replace(config, **{"stem": LEGACY_STEM, "augmentation": "", "erase_prob": None, "ema_decay": None,
                              **kept})


def _augment(config: TrainConfig, pixels: Tensor, generator: torch.Generator) -> Tensor:
    if config.augmentation == "pad-crop":
        pixels = pad_crop_augment(pixels, config.input_size, config.crop_padding, generator)
    else:
        pixels = affine_augment(pixels, config.input_size, generator)
    if config.erase_prob:
        pixels = random_erase(pixels, config.erase_prob, PIXEL_MEAN, generator)
    return pixels


def train(config: TrainConfig, after_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Trains, checkpointing every epoch; returns the path of the best (PublicTest) checkpoint. `after_epoch` gets
    each epoch's record once its checkpoints are written."""
    if config.ferplus_weight > 0 and config.ferplus is None:
        raise FervidError("a FER+ weight needs the FER+ votes file (fer2013_meta.npz)", code=INVALID_REQUEST)
    if config.select not in SELECTIONS:
        raise FervidError(f"--select must be one of {', '.join(SELECTIONS)}, not {config.select!r}",
                          code=INVALID_REQUEST)
    if config.select == "crowd" and (config.ferplus is None or not config.ferplus.is_file()):
        raise FervidError("--select crowd needs the FER+ votes file (--ferplus fer2013_meta.npz)",
                          code=INVALID_REQUEST)
    if not 0.0 <= config.distill_weight <= 1.0 or config.distill_temperature <= 0:
        raise FervidError("--distill-weight must lie in [0, 1] and --distill-temperature be positive",
                          code=INVALID_REQUEST)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FervidError("--device cuda, but torch sees no CUDA GPU here; train with --device cpu",
                          code=INVALID_REQUEST)
    if config.threads:
        torch.set_num_threads(config.threads)
    precision = choose_precision(config.precision, device.type, read_cpu_features())
    print(f"precision: {precision.name} autocast on {device.type}, because {precision.reason}", flush=True)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    train_split: Split = load_split(config.data, "train")
    public_split: Split = load_split(config.data, "public")
    if config.limit_train:
        train_split = train_split.head(config.limit_train)
    public_majority = load_crowd_majority(config.ferplus, "public") \
        if config.ferplus is not None and config.ferplus.is_file() else None
    if config.limit_eval:
        public_split = public_split.head(config.limit_eval)
    if public_majority is not None:
        public_majority = public_majority[: len(public_split)]
        if not (public_majority != NO_MAJORITY).any():
            raise FervidError(f"no PublicTest face has a FER+ crowd majority in {config.ferplus}",
                              code=INVALID_REQUEST)

    def public_standing(network: nn.Module) -> Standing:
        probs = predict_probs(network, public_split.faces, config.input_size, False, precision.bf16, device=device)
        return standing(config, top1(probs, public_split.labels),
                        None if public_majority is None else crowd_agreement(probs, public_majority))

    last_path, best_path = config.out_dir / "last.pt", config.out_dir / "best.pt"
    resumed = torch.load(last_path, map_location="cpu", weights_only=False) \
        if config.resume and last_path.exists() else None
    if resumed is not None:
        config = resolve_recipe(_resumed_config(config, resumed["config"]))
    elif config.init == "model":
        if config.init_model is None:
            raise SystemExit("--init model needs --init-model PATH (a `fervid export` or `fervid quantize` output)")
        config = resolve_recipe(config, exported_member(config.init_model, config.init_member))
    else:
        config = resolve_recipe(config)
    assert config.erase_prob is not None and config.ema_decay is not None  # resolved
    print(f"recipe: {config.stem} stem at {config.input_size} px, {config.augmentation} augmentation, erasing "
          f"p={config.erase_prob}, mixup {config.mixup_alpha}, cutmix {config.cutmix_alpha}, EMA "
          f"{config.ema_decay or 'off'}, class weights {'on' if config.class_weighted else 'off'}, lr "
          f"{peak_lr(config):g} (base {config.base_lr:g} x {config.batch_size}/256)"
          f"{f', distilled from {config.teacher}' if config.teacher else ''}", flush=True)
    data_sha = sha256_file(config.data)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    torch.manual_seed(config.seed)
    start: Standing | None = None
    if resumed is None:
        network = build_network(config, train_split.faces, data_sha)
        network = network.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
        if config.init == "model":  # the baseline the continuation has to beat
            start = public_standing(network)
            print(json.dumps({"epoch": 0, **_figures(start)}), flush=True)
    else:
        # The checkpoint's weights replace whatever the run started from: no warm start or download again.
        network = build_network(replace(config, init="scratch"))
        network = network.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
        config.prior_init = resumed["config"].get("prior_init", "")
        config.prior_epochs = int(resumed["config"].get("prior_epochs", 0))
    ema = WeightAverage(network, config.ema_decay) if config.ema_decay else None
    teacher = OnnxTeacher(config.teacher, config.threads) if config.teacher else None
    optimizer = build_optimizer(network, config)
    ferplus_shares = load_ferplus_shares(config.ferplus, "train")[: len(train_split)] \
        if config.ferplus_weight > 0 and config.ferplus is not None else None
    targets = training_targets(train_split.labels, ferplus_shares, config.ferplus_weight, config.label_smoothing,
                               len(EMOTIONS)).to(device)
    weight = class_weights(train_split.labels, len(EMOTIONS)) if config.class_weighted else torch.ones(len(EMOTIONS))
    weight = weight.to(device)
    steps_per_epoch = len(train_split) // config.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"batch size {config.batch_size} exceeds the {len(train_split)} training faces")

    start_epoch, step, best = 0, 0, Standing(-1.0, None, -math.inf)
    if start is not None:
        # best.pt starts as the network the continuation began from, so it never hands back a worse one (and
        # `--epochs 0` turns a network of an exported file into a checkpoint).
        best = start
        save_checkpoint(best_path, network, optimizer, config, -1, step, best, best, ema)
    if resumed is not None:
        network.load_state_dict(resumed.get("training_network", resumed["network"]))
        if ema is not None:
            ema.load_state_dict({"updates": resumed.get("ema_updates", 0), "network": resumed["network"]})
        optimizer.load_state_dict(resumed["optimizer"])
        start_epoch, step = resumed["epoch"] + 1, resumed["step"]
        best = Standing(resumed["best_public"], resumed.get("best_public_crowd"),
                        resumed.get("best_score", resumed["best_public"]))
        config.history = resumed["config"].get("history", [])
        print(f"resumed from {last_path} after epoch {resumed['epoch'] + 1}", flush=True)

    step_network: nn.Module = torch.compile(network) if config.compile else network  # type: ignore[assignment]
    candidate = network if ema is None else ema.network
    # The whole training set stays on the device as uint8 (27 MB for FER-2013); batches are augmented there.
    faces = torch.from_numpy(train_split.faces).unsqueeze(1).to(device)
    labels = torch.from_numpy(train_split.labels).to(device)
    eval_seconds = 0.0
    for epoch in range(start_epoch, config.epochs):
        # Per-epoch seeds from (seed, epoch) for the data order, augmentation, mixing and dropout (the global RNG): a
        # resumed run draws exactly what an unbroken one would, so no RNG state needs saving.
        generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + epoch)
        torch.manual_seed(config.seed * 1000 + epoch + 1)
        mix_rng = np.random.default_rng((config.seed, epoch))
        if config.init == "imagenet":
            set_shallow_frozen(network, frozen=epoch < config.freeze_epochs)
        order = torch.randperm(len(labels), generator=generator, device=device)
        network.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for batch_index in range(steps_per_epoch):
            index = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            pixels = _augment(config, faces[index].float() / 255.0, generator)
            pixels, batch_targets = mix_batch(pixels, targets[index], config.mixup_alpha, config.cutmix_alpha,
                                              generator, mix_rng)
            batch = normalize(pixels).contiguous(memory_format=memory_format)
            target = labels[index]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, steps_per_epoch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.bf16):
                logits = step_network(batch)
            loss = weighted_cross_entropy(logits.float(), batch_targets, weight)
            if teacher is not None:
                soft = distillation_loss(logits.float(), teacher.probs(pixels), config.distill_temperature)
                loss = (1.0 - config.distill_weight) * loss + config.distill_weight * soft
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(network)
            step += 1
            loss_sum += loss.detach().double() * len(target)
            correct += (logits.argmax(1) == target).sum()
            seen += len(target)
            done = batch_index + 1
            if config.progress_every and done % config.progress_every == 0 and done < steps_per_epoch:
                elapsed = time.perf_counter() - started
                per_step = elapsed / done
                remaining = (steps_per_epoch - done) * per_step + (config.epochs - epoch - 1) * (
                    steps_per_epoch * per_step + eval_seconds)
                print(f"epoch {epoch + 1}/{config.epochs} batch {done}/{steps_per_epoch}: loss "
                      f"{float(loss_sum) / seen:.4f}, {seen / elapsed:.1f} images/s, ETA {_clock(remaining)}",
                      flush=True)
        train_seconds = time.perf_counter() - started
        evaluated = time.perf_counter()
        epoch_standing = public_standing(candidate)
        eval_seconds = time.perf_counter() - evaluated
        record = {
            "epoch": epoch + 1, "train_loss": round(float(loss_sum) / seen, 4),
            "train_acc": round(int(correct) / seen, 4), **_figures(epoch_standing),
            "epoch_seconds": round(train_seconds, 1), "images_per_second": round(seen / train_seconds, 1),
            "lr": round(optimizer.param_groups[0]["lr"], 6),
            "eta_seconds": round((config.epochs - epoch - 1) * (train_seconds + eval_seconds)),
        }
        config.history.append(record)
        print(json.dumps(record), flush=True)
        if epoch_standing.score > best.score:
            best = epoch_standing
            save_checkpoint(best_path, network, optimizer, config, epoch, step, best, best, ema)
        save_checkpoint(last_path, network, optimizer, config, epoch, step, best, epoch_standing, ema)
        if config.keep_epochs:
            save_checkpoint(config.out_dir / f"epoch-{epoch + 1:03d}.pt", network, optimizer, config, epoch, step,
                            best, epoch_standing, ema)
        (config.out_dir / "history.json").write_text(json.dumps(
            {"data_sha256": data_sha, "select": config.select, "best": _figures(best), "history": config.history},
            indent=1))
        if after_epoch is not None:
            after_epoch(record)
    return best_path
