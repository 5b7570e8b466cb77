"""`fervid eval`: top-1, macro-F1, per-class scores and confusion matrices on PublicTest / PrivateTest."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.training.commands.data_paths import DEFAULT_DATA_PATH, DEFAULT_FERPLUS_PATH
from models.training.evaluate import DEFAULT_BATCH, EVAL_SPLITS, TTA_CHOICES, run_evaluation
from models.training.quantize import DEFAULT_CALIBRATION_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a `fervid train` checkpoint")
    source.add_argument("--onnx", type=Path, help="an exported model, run exactly as jobs run it")
    parser.add_argument("--splits", default=",".join(EVAL_SPLITS), help="comma list of public, private")
    parser.add_argument("--tta", choices=tuple(TTA_CHOICES), default="both", help="horizontal-flip averaging")
    parser.add_argument("--int8", action="store_true", help="also quantize to INT8 and compare accuracy and speed")
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                        help="train faces used to calibrate INT8")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"), help="folder for metrics.json and plots")
    parser.add_argument("--against", type=Path, default=None,
                        help="another ONNX model (the shipped one, say) scored on the same faces: the difference "
                             "and McNemar's exact test")
    parser.add_argument("--limit", type=int, default=0, help="only the first N faces of each split")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS_PATH,
                        help="FER+ votes (fer2013_meta.npz): agreement with the crowd majority on clear faces; "
                             "'none' to leave it out")


def run(args: argparse.Namespace) -> int:
    run_evaluation(
        checkpoint=args.checkpoint, onnx_model=args.onnx, data_path=args.data,
        splits=[name.strip() for name in args.splits.split(",") if name.strip()], tta=args.tta, out_dir=args.out,
        limit=args.limit, int8=args.int8, calibration_size=args.calibration_size, batch_size=args.batch_size,
        against=args.against, ferplus=None if str(args.ferplus) == "none" else args.ferplus,
    )
    return 0
