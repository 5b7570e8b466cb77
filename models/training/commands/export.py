"""`fervid export`: training checkpoints -> the self-describing ONNX artifact the runtime loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.graph_rewrites import WEIGHT_FORMATS
from models.training.commands.data_paths import DEFAULT_DATA_PATH
from models.training.export import export_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, action="append",
                        help="a `fervid train` checkpoint (best.pt) or an earlier single-network export (.onnx); "
                             "repeat to export the ensemble that averages their probabilities")
    parser.add_argument("--out", type=Path, default=Path("models/fervid-emotion.onnx"))
    parser.add_argument("--tta", action="store_true", help="tell the runtime to average with the mirrored face")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="fp16",
                        help="how weights are stored in the file (compute is fp32 either way); int8-scaled keeps a "
                             "two-network ensemble under 50 MB")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"FER-2013 .npz for verification (default {DEFAULT_DATA_PATH} when present, "
                             "else random faces)")


def run(args: argparse.Namespace) -> int:
    data_path = args.data
    if data_path is None and DEFAULT_DATA_PATH.is_file():
        data_path = DEFAULT_DATA_PATH
    export_onnx(args.checkpoint, args.out, tta=args.tta, weights=args.weights, data_path=data_path)
    return 0
