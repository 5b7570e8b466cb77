"""What a training run does: its options (`TrainConfig`), each stem's recipe, and how a run's stem, input size and
stem-dependent options are decided (from the options, the init, or the checkpoint a resumed run goes on from)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fervid.errors import INVALID_REQUEST, FervidError
from models.spec import LEGACY_STEM, STEMS
from models.training.augment import AUGMENTATIONS
from models.training.predict import NATIVE_SIZE
from models.training.warm_start import ExportedNetwork, exported_member


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


def check_options(config: TrainConfig) -> None:
    """Refuses options that cannot make a run, before anything is loaded."""
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


def resolve_run(config: TrainConfig, resumed_config: dict[str, Any] | None) -> TrainConfig:
    """The recipe of this run: a resumed run's from its checkpoint's config, a continuation's from the exported model
    it continues, any other's from its options."""
    if resumed_config is not None:
        return resolve_recipe(resumed_recipe(config, resumed_config))
    if config.init == "model":
        if config.init_model is None:
            raise SystemExit("--init model needs --init-model PATH (a `fervid export` or `fervid quantize` output)")
        return resolve_recipe(config, exported_member(config.init_model, config.init_member))
    return resolve_recipe(config)


def resumed_recipe(config: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """`config` with the network and recipe of the run it resumes; checkpoints from before stems were a choice hold
    the imagenet stem and its recipe."""
    kept = {key: saved[key] for key in RESUMED_FIELDS if key in saved}
    return replace(config, **{"stem": LEGACY_STEM, "augmentation": "", "erase_prob": None, "ema_decay": None,
                              **kept})


def peak_lr(config: TrainConfig) -> float:
    """The learning rate scaled to the batch (Goyal et al. 2017): base_lr at 256 faces a step."""
    return config.base_lr * config.batch_size / 256


def describe_recipe(config: TrainConfig) -> str:
    return (f"recipe: {config.stem} stem at {config.input_size} px, {config.augmentation} augmentation, erasing "
            f"p={config.erase_prob}, mixup {config.mixup_alpha}, cutmix {config.cutmix_alpha}, EMA "
            f"{config.ema_decay or 'off'}, class weights {'on' if config.class_weighted else 'off'}, lr "
            f"{peak_lr(config):g} (base {config.base_lr:g} x {config.batch_size}/256)"
            f"{f', distilled from {config.teacher}' if config.teacher else ''}")
