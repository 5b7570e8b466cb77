"""`fervid train`: fine-tune (or train from scratch) the ResNet50 emotion classifier on FER-2013 train."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.training.commands.data_paths import DEFAULT_DATA_PATH, DEFAULT_FERPLUS_PATH
from models.training.train import TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(out_dir=Path("runs/resnet50"), data=DEFAULT_DATA_PATH, ferplus=DEFAULT_FERPLUS_PATH)
    parser.add_argument("--out", type=Path, default=defaults.out_dir, help="run folder (checkpoints, history)")
    parser.add_argument("--data", type=Path, default=defaults.data)
    parser.add_argument("--init", choices=("scratch", "imagenet", "model"), default=defaults.init,
                        help="model: continue training a network of an exported fervid model (--init-model)")
    parser.add_argument("--imagenet-weights", default=None, help="torchvision ResNet50 state dict: path or URL")
    parser.add_argument("--init-model", type=Path, default=None,
                        help="`fervid export`/`fervid quantize` output to continue from (INT8 and fp16 included)")
    parser.add_argument("--init-member", type=int, default=defaults.init_member,
                        help="which network of an ensemble --init-model holds (0-based)")
    parser.add_argument("--input-size", type=int, default=defaults.input_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--freeze-epochs", type=int, default=defaults.freeze_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--ferplus-weight", type=float, default=defaults.ferplus_weight,
                        help="blend each label with this weight of the FER+ annotators' votes for the face (0: off)")
    parser.add_argument("--ferplus", type=Path, default=defaults.ferplus, help="FER+ votes (fer2013_meta.npz)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--limit-train", type=int, default=0)
    parser.add_argument("--limit-eval", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly")


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(
        out_dir=args.out, data=args.data, init=args.init, imagenet_weights=args.imagenet_weights,
        init_model=args.init_model, init_member=args.init_member,
        input_size=args.input_size, epochs=args.epochs, freeze_epochs=args.freeze_epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, ferplus_weight=args.ferplus_weight, ferplus=args.ferplus,
        seed=args.seed, threads=args.threads, bf16=args.bf16,
        limit_train=args.limit_train, limit_eval=args.limit_eval, resume=args.resume,
    )
    best = train(config)
    print(f"best PublicTest checkpoint: {best}")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="fervid train")
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
