"""The INT8 file fused (integer kernels this CPU picks) against its graph as written (QDQ computed in float, graph
optimisation off), on FER-2013 faces: the check that catches saturating kernels on the CPU where they happen.

    .venv/bin/python bench/int8_agreement.py [--model models/fervid-emotion.onnx] [--split private]

Prints the CPU, both top-1 accuracies (no flip), their top-1 agreement and the largest probability difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.cpu_features import read_cpu_features  # noqa: E402
from models.network_io import preprocess_faces  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402
from models.training.fer2013 import load_split  # noqa: E402


def outputs(model: Path, batch: NDArray[np.float32], level: ort.GraphOptimizationLevel) -> NDArray[np.float32]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: batch[i : i + 128]})[0] for i in range(0, len(batch), 128)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--split", default="private", choices=("public", "private"))
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"bench/int8_agreement.py: {args.data} not found (needs ../shared); skipped")
        return 0
    split = load_split(args.data, args.split)
    batch = preprocess_faces(list(split.faces), read_model_spec(args.model).preprocess)
    started = time.perf_counter()
    fused = outputs(args.model, batch, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    as_written = outputs(args.model, batch, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    print(f"CPU: {read_cpu_features().describe()}; onnxruntime {ort.__version__}")
    print(f"{args.split}, {len(batch)} faces, no flip: fused top-1 {(fused.argmax(1) == split.labels).mean():.2%}, "
          f"as written {(as_written.argmax(1) == split.labels).mean():.2%}, top-1 agreement "
          f"{(fused.argmax(1) == as_written.argmax(1)).mean():.2%}, largest probability difference "
          f"{np.abs(fused - as_written).max():.3f} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
