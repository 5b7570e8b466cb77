"""Which faces can be read? The shipped classifier's PublicTest top-1 against blur, roll and yaw, measured the way
jobs measure them (models/face_quality.py), to choose the thresholds of `reliable` (fervid/quality.py).

    .venv/bin/python bench/face_quality.py [--model PATH] [--yunet PATH] [--out runs/face_quality.json]

1. Blur: every face blurred by a Gaussian of sigma 0 (none) to 2.5 px (on the 48 px face); top-1 per bin of the
   runtime's sharpness, all sigmas pooled (the same sharpness means the same whatever blurred it).
2. Roll: every face turned by 0 to 45 degrees (edges replicated); top-1 per angle (the turn is exact here).
3. Yaw: every face enlarged x3 into a larger picture (edges mirrored) for YuNet, whose landmarks give the runtime's
   yaw estimate; top-1 per |yaw| bin, on the faces YuNet finds (FER-2013's tight crops are found less often than
   faces in frames, so this curve has fewer faces).
Top-1 is as jobs compute it (the model's TTA and temperature); size is bench/detect_size.py's curve.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.backends.ort import OrtBackend  # noqa: E402
from models.classifier import EmotionClassifier  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.detectors import YuNetDetector  # noqa: E402
from models.face_quality import head_pose, sharpness  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402
from models.training.fer2013 import load_split  # noqa: E402

SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5)
SHARPNESS_EDGES = (0, 10, 20, 40, 80, 160, 320, 640, 1280, np.inf)
ROLLS = (0, 10, 15, 20, 25, 30, 40)
YAW_EDGES = (0, 10, 20, 30, 40, 50, 90)
ENLARGE = 3
DEFAULT_YUNET = Path("../shared/models/face_detection_yunet_2023mar.onnx")


def blurred(faces: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    if sigma == 0:
        return faces
    return np.stack([cv2.GaussianBlur(face, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) for face in faces])


def turned(faces: NDArray[np.uint8], degrees: float) -> NDArray[np.uint8]:
    size = faces.shape[1]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, 1.0)
    return np.stack([cv2.warpAffine(face, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE) for face in faces])


def table(values: NDArray[np.float64], right: NDArray[np.bool_], edges: tuple[float, ...]) -> list[dict[str, Any]]:
    rows = []
    for low, high in zip(edges, edges[1:], strict=False):
        members = (values >= low) & (values < high)
        if members.any():
            rows.append({"from": low, "to": None if high == np.inf else high, "faces": int(members.sum()),
                         "top1": round(float(right[members].mean()), 4)})
    return rows


def yaw_estimates(faces: NDArray[np.uint8], detector: YuNetDetector) -> NDArray[np.float64]:
    """Each face's yaw as a job estimates it, NaN where YuNet finds no face."""
    yaws = np.full(len(faces), np.nan)
    side = faces.shape[1] * ENLARGE
    for i, face in enumerate(faces):
        large = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        picture = cv2.copyMakeBorder(large, side // 2, side // 2, side // 2, side // 2, cv2.BORDER_REFLECT)
        found = detector.detect(cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR))
        if found:
            best = max(found, key=lambda detection: detection.score)
            if best.landmarks is not None:
                yaws[i] = head_pose(best.landmarks)[0]
    return yaws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--yunet", type=Path, default=DEFAULT_YUNET)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()

    public = load_split(args.data, "public")
    classifier = EmotionClassifier(read_model_spec(args.model), OrtBackend(args.model, max_batch=256))

    def right(faces: NDArray[np.uint8]) -> NDArray[np.bool_]:
        return np.asarray(classifier.classify(list(faces)).argmax(axis=1) == public.labels)

    print(f"CPU: {read_cpu_features().describe()}; model {args.model}; PublicTest {len(public)} faces", flush=True)
    sharp_values, sharp_right, per_sigma = [], [], []
    for sigma in SIGMAS:
        faces = blurred(public.faces, sigma)
        correct = right(faces)
        values = np.array([sharpness(face) for face in faces])
        sharp_values.append(values)
        sharp_right.append(correct)
        per_sigma.append({"sigma": sigma, "top1": round(float(correct.mean()), 4),
                          "median_sharpness": round(float(np.median(values)), 1)})
        print(f"blur sigma {sigma:4.2f}: top-1 {correct.mean():.2%}, median sharpness {np.median(values):.0f}",
              flush=True)
    by_sharpness = table(np.concatenate(sharp_values), np.concatenate(sharp_right), SHARPNESS_EDGES)
    by_roll = []
    for degrees in ROLLS:
        correct = right(turned(public.faces, degrees))
        by_roll.append({"roll": degrees, "top1": round(float(correct.mean()), 4)})
        print(f"roll {degrees:2d} deg: top-1 {correct.mean():.2%}", flush=True)
    yaws = yaw_estimates(public.faces, YuNetDetector(args.yunet))
    found = ~np.isnan(yaws)
    by_yaw = table(np.abs(yaws[found]), right(public.faces)[found], YAW_EDGES)
    report = {"model": str(args.model), "cpu": read_cpu_features().describe(), "faces": len(public),
              "blur": per_sigma, "by_sharpness": by_sharpness, "by_roll": by_roll,
              "yaw_found": int(found.sum()), "by_abs_yaw": by_yaw}
    for name in ("by_sharpness", "by_abs_yaw"):
        for row in report[name]:
            print(f"{name} [{row['from']}, {row['to']}): {row['faces']} faces, top-1 {row['top1']:.2%}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
