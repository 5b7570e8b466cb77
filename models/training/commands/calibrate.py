"""`fervid calibrate`: fit the emotion model's temperature on PublicTest and write it into the model's metadata."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.training.calibration import calibrate, format_report
from models.training.commands.data_paths import DEFAULT_DATA_PATH, DEFAULT_FERPLUS_PATH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True, help="the model to calibrate (any `fervid export` or "
                        "`fervid quantize` output)")
    parser.add_argument("--out", type=Path, required=True, help="where the calibrated copy goes")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here as JSON")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS_PATH,
                        help="FER+ votes: also the error against the crowd; 'none' to leave it out")


def run(args: argparse.Namespace) -> int:
    ferplus = None if str(args.ferplus) == "none" or not args.ferplus.is_file() else args.ferplus
    report = calibrate(args.onnx, args.out, args.data, ferplus)
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=1))
    print(format_report(report))
    return 0
