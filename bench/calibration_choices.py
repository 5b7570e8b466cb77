"""Which calibration to ship: the temperature `fervid calibrate` fits, against a per-class bias (and per-class scales)
fitted the same way, each judged on PrivateTest by its calibration against FER-2013's labels and against the FER+
crowd, and by what it does to the predictions.

    .venv/bin/python bench/calibration_choices.py [--model models/fervid-emotion.onnx] [--data PATH] [--meta PATH]

Each map is fitted on PublicTest by minimising the NLL of FER-2013's labels (as `fervid calibrate` does), on the
network's own probabilities with the file's TTA (a temperature already in the file is undone). A temperature keeps
every face's top emotion; a bias or per-class scales move some, so top-1 and the crowd agreement change too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from bench.shared_data import SHARED  # noqa: E402
from models.network_io import softmax, temperature_scaled  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.calibration import (  # noqa: E402
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    vote_calibration_error,
)
from models.training.evaluate import onnx_predictor  # noqa: E402
from models.training.fer2013 import load_crowd_majority, load_ferplus_shares, load_split  # noqa: E402

STEPS, STEP_SIZE = 3000, 0.5


def fit_affine(log_probs: NDArray[np.float32], labels: NDArray[np.int64], temperature: float,
               per_class_scale: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """scale, bias minimising the NLL of softmax(log p x scale + bias): plain gradient descent from the temperature
    (the NLL is convex in them)."""
    classes = log_probs.shape[1]
    scale, bias = np.full(classes, 1.0 / temperature), np.zeros(classes)
    onehot = np.eye(classes)[labels]
    for _ in range(STEPS):
        error = (softmax((log_probs * scale + bias).astype(np.float32)) - onehot) / len(labels)
        scale_step = (error * log_probs).sum(axis=0)
        scale -= STEP_SIZE * (scale_step if per_class_scale else np.full(classes, scale_step.sum()))
        bias -= STEP_SIZE * error.sum(axis=0)
    return scale, bias


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "fer2013.npz")
    parser.add_argument("--meta", type=Path, default=SHARED / "data" / "fer2013_meta.npz")
    args = parser.parse_args()
    spec = read_model_spec(args.model)
    predict, _ = onnx_predictor(args.model)
    splits = {name: load_split(args.data, name) for name in ("public", "private")}
    raw = {name: temperature_scaled(predict(split.faces, spec.tta == "hflip"), 1.0 / spec.temperature)
           for name, split in splits.items()}
    log_public = np.log(np.maximum(raw["public"], 1e-12))
    temperature = fit_temperature(raw["public"], splits["public"].labels)
    maps = {"temperature (shipped)": (np.full(7, 1.0 / temperature), np.zeros(7)),
            "temperature + per-class bias": fit_affine(log_public, splits["public"].labels, temperature, False),
            "per-class scale + bias": fit_affine(log_public, splits["public"].labels, temperature, True)}
    private = splits["private"]
    majority = load_crowd_majority(args.meta, "private")
    clear = majority >= 0
    shares = load_ferplus_shares(args.meta, "private")
    print(f"{args.model} on PrivateTest ({len(private)} faces; {clear.sum()} clear to the crowd)")
    print(f"{'map':<30}{'ECE (FER)':>10}{'ECE (crowd)':>12}{'NLL':>8}{'top-1':>8}{'crowd':>8}")
    for name, (scale, bias) in maps.items():
        probs = softmax((np.log(np.maximum(raw["private"], 1e-12)) * scale + bias).astype(np.float32))
        top = probs.argmax(axis=1)
        print(f"{name:<30}{expected_calibration_error(probs, private.labels):>10.4f}"
              f"{vote_calibration_error(probs, shares):>12.4f}{negative_log_likelihood(probs, private.labels):>8.4f}"
              f"{(top == private.labels).mean():>8.2%}{(top[clear] == majority[clear]).mean():>8.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
