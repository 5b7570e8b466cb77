"""`fervid train`: fine-tune (or train from scratch) the ResNet50 emotion classifier on FER-2013 train."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.spec import STEMS
from models.training.augment import AUGMENTATIONS
from models.training.commands.data_paths import DEFAULT_DATA_PATH, DEFAULT_FERPLUS_PATH
from models.training.precision import PRECISIONS
from models.training.recipe import SCRATCH_STEM, SELECTIONS, TrainConfig
from models.training.train import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(out_dir=Path("runs/resnet50"), data=DEFAULT_DATA_PATH, ferplus=DEFAULT_FERPLUS_PATH)
    _add_start_arguments(parser, defaults)
    _add_augmentation_arguments(parser, defaults)
    _add_optimization_arguments(parser, defaults)
    _add_target_and_selection_arguments(parser, defaults)
    _add_run_arguments(parser, defaults)


def _add_start_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    parser.add_argument("--out", type=Path, default=defaults.out_dir, help="run folder (checkpoints, history)")
    parser.add_argument("--data", type=Path, default=defaults.data)
    parser.add_argument("--init", choices=("scratch", "imagenet", "model"), default=defaults.init,
                        help="model: continue training a network of an exported fervid model (--init-model)")
    parser.add_argument("--stem", choices=STEMS, default=None,
                        help=f"small: 3x3 stride-1 convolution at 48 px, no max-pool; small-pool: with it; imagenet: "
                             f"torchvision's 7x7 stride 2 + max-pool (default: {SCRATCH_STEM} from scratch, imagenet "
                             "for --init imagenet, the file's own for --init model)")
    parser.add_argument("--imagenet-weights", default=None, help="torchvision ResNet50 state dict: path or URL")
    parser.add_argument("--init-model", type=Path, default=None,
                        help="`fervid export`/`fervid quantize` output to continue from (INT8 and fp16 included)")
    parser.add_argument("--init-member", type=int, default=defaults.init_member,
                        help="which network of an ensemble --init-model holds (0-based)")
    parser.add_argument("--input-size", type=int, default=defaults.input_size,
                        help="network input, px (default: 48 for the small stems, 64 for imagenet, the file's for "
                             "--init model)")


def _add_augmentation_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    parser.add_argument("--augmentation", choices=AUGMENTATIONS, default=None,
                        help="pad-crop: pad the face, random crop, flip (default for the small stems); affine: "
                             "random resized crop, rotation, flip, brightness/contrast (default for imagenet)")
    parser.add_argument("--crop-padding", type=int, default=defaults.crop_padding, help="pad-crop: pixels of padding")
    parser.add_argument("--erase-prob", type=float, default=None,
                        help="random erasing, per face (default: 0.5 for the small stems, 0 for imagenet)")
    parser.add_argument("--mixup-alpha", type=float, default=defaults.mixup_alpha, help="0: no mixup")
    parser.add_argument("--cutmix-alpha", type=float, default=defaults.cutmix_alpha, help="0: no CutMix")


def _add_optimization_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--freeze-epochs", type=int, default=defaults.freeze_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--base-lr", type=float, default=defaults.base_lr,
                        help="SGD Nesterov's peak learning rate at batch 256; the run steps at base-lr x batch/256 "
                             "(an earlier run's --lr L at batch B is --base-lr L*256/B)")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help="on weights only, never BatchNorm or biases")
    parser.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs,
                        help="linear warm-up, then cosine to zero")
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--class-weights", dest="class_weighted", action=argparse.BooleanOptionalAction,
                        default=defaults.class_weighted, help="square-root inverse-frequency class weights in the loss")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="keep, evaluate and checkpoint an EMA of the weights as the candidate; 0: off "
                             "(default: 0.999 for the small stems, off for imagenet)")


def _add_target_and_selection_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    parser.add_argument("--teacher", type=Path, default=None,
                        help="an exported model to distil from, run on the same augmented batch as the student")
    parser.add_argument("--distill-weight", type=float, default=defaults.distill_weight,
                        help="loss = (1 - w) cross-entropy + w distillation")
    parser.add_argument("--distill-temperature", type=float, default=defaults.distill_temperature)
    parser.add_argument("--ferplus-weight", type=float, default=defaults.ferplus_weight,
                        help="blend each label with this weight of the FER+ annotators' votes for the face (0: off)")
    parser.add_argument("--ferplus", type=Path, default=defaults.ferplus, help="FER+ votes (fer2013_meta.npz)")
    parser.add_argument("--select", choices=SELECTIONS, default=defaults.select,
                        help="how best.pt is chosen on PublicTest: top-1, or the most agreement with the FER+ crowd "
                             "majority among epochs whose top-1 stays at or above --min-public-acc")
    parser.add_argument("--min-public-acc", type=float, default=defaults.min_public_acc,
                        help="--select crowd: the PublicTest top-1 floor (default: the fer library's 65.4 %%)")


def _add_run_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--device", default=defaults.device, help="cpu or cuda")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="auto: bf16 autocast on a CUDA GPU or a CPU with AVX512-BF16/AMX-BF16, else fp32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last)
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--progress-every", type=int, default=defaults.progress_every,
                        help="batches between progress lines (0: per epoch only)")
    parser.add_argument("--limit-train", type=int, default=0)
    parser.add_argument("--limit-eval", type=int, default=0)
    parser.add_argument("--keep-epochs", action="store_true",
                        help="also keep every epoch's checkpoint (OUT/epoch-NNN.pt), to compare them as shipped "
                             "(quantized, with TTA) before choosing")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/last.pt exactly (its stem, input size and recipe win)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        out_dir=args.out, data=args.data, init=args.init, stem=args.stem or "",
        imagenet_weights=args.imagenet_weights, init_model=args.init_model, init_member=args.init_member,
        input_size=args.input_size, augmentation=args.augmentation or "", crop_padding=args.crop_padding,
        erase_prob=args.erase_prob, mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
        epochs=args.epochs, freeze_epochs=args.freeze_epochs, batch_size=args.batch_size, base_lr=args.base_lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        class_weighted=args.class_weighted, ema_decay=args.ema_decay, teacher=args.teacher,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
        ferplus_weight=args.ferplus_weight, ferplus=args.ferplus, select=args.select,
        min_public_acc=args.min_public_acc, seed=args.seed, threads=args.threads,
        device=args.device, precision=args.precision, channels_last=args.channels_last, compile=args.compile,
        progress_every=args.progress_every, limit_train=args.limit_train, limit_eval=args.limit_eval,
        resume=args.resume, keep_epochs=args.keep_epochs,
    )


def run(args: argparse.Namespace) -> int:
    best = train(config_from_args(args))
    print(f"best PublicTest checkpoint: {best}")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="fervid train")
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
