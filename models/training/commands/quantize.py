"""`fervid quantize`: an INT8 copy of a model for ONNX Runtime on the CPU or for TensorRT.

    fervid quantize --model models/fervid-emotion.onnx --target tensorrt --out runs/fervid-emotion-trt-int8.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fervid.errors import DATA_NOT_FOUND, INVALID_REQUEST, FervidError
from models.spec import DEFAULT_MODEL_PATH, read_model_spec
from models.training.commands.data_paths import DEFAULT_DATA_PATH
from models.training.quantize import DEFAULT_CALIBRATION_SIZE, TARGETS, calibration_faces, quantize_int8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH,
                        help="an ONNX from `fervid export` (or a quantized one: its float graph is re-quantized)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", choices=TARGETS, default="cpu",
                        help="cpu: ONNX Runtime (uint8 activations); tensorrt: symmetric int8 for "
                             "`fervid engines build --precision int8`")
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                        help="train faces used to calibrate")
    parser.add_argument("--member", type=int, default=None,
                        help="quantize only this network (1-based) of an ensemble: a single-network model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)


def run(args: argparse.Namespace) -> int:
    if args.calibration_size <= 0:
        raise FervidError("--calibration-size must be positive", code=INVALID_REQUEST)
    if not args.data.is_file():
        raise FervidError(f"data file {args.data} not found; pass --data PATH to fer2013.npz", code=DATA_NOT_FOUND)
    faces = calibration_faces(args.data, args.calibration_size)
    out = quantize_int8(args.model, args.out, faces, read_model_spec(args.model).preprocess, args.target, args.member)
    print(f"wrote {out} ({args.target}, calibrated on {len(faces)} train faces)")
    return 0
