"""Accuracy experiment (not a speed benchmark): would more test-time views than the mirror image help?

    .venv/bin/python bench/tta_views.py [--model models/fervid-emotion.onnx]

Scores PublicTest only (the selection split; PrivateTest is never read here) through the runtime path jobs use, with
the mirror-image average the model ships with, and with extra views of each face added to it: crops of 90 % and
95 % of the side (centre and corners, as training's random resized crops take 87-100 %) and turns of +-8 degrees.
Each view is averaged with its own mirror image. Prints one JSON line per view set with its top-1 and the network
passes it costs per face.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fervid.settings import get_settings  # noqa: E402
from models.backends import BackendOptions, select_backend  # noqa: E402
from models.classifier import EmotionClassifier  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402
from models.training.fer2013 import load_split  # noqa: E402

Faces = NDArray[np.uint8]  # (N, 48, 48) grey


def crop(side: float, dx: int, dy: int) -> Callable[[Faces], Faces]:
    """A square of `side` x 48 pixels, at the centre (0) or against an edge (-1 / +1) on each axis."""
    def view(faces: Faces) -> Faces:
        size = int(round(faces.shape[1] * side))
        room = faces.shape[1] - size
        x0, y0 = int(round(room / 2 * (1 + dx))), int(round(room / 2 * (1 + dy)))
        return faces[:, y0 : y0 + size, x0 : x0 + size]
    return view


def turn(degrees: float) -> Callable[[Faces], Faces]:
    def view(faces: Faces) -> Faces:
        side = faces.shape[1]
        matrix = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), degrees, 1.0)
        return np.stack([cv2.warpAffine(face, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE) for face in faces])
    return view


CORNERS = {"tl": (-1, -1), "tr": (1, -1), "bl": (-1, 1), "br": (1, 1)}
VIEWS: dict[str, Callable[[Faces], Faces]] = {
    "crop90": crop(0.9, 0, 0), "crop95": crop(0.95, 0, 0),
    **{f"crop90{name}": crop(0.9, dx, dy) for name, (dx, dy) in CORNERS.items()},
    "turn-8": turn(-8), "turn+8": turn(8),
}
VIEW_SETS = {
    "mirror (shipped)": [], "+ crop90": ["crop90"], "+ crop95": ["crop95"],
    "+ crop90 centre and corners": ["crop90", *(f"crop90{name}" for name in CORNERS)],
    "+ turns +-8": ["turn-8", "turn+8"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    args = parser.parse_args()
    spec = read_model_spec(args.model)
    # The runtime's own mirror-image average, for every view.
    options = BackendOptions.from_settings(get_settings())
    backend = select_backend(args.model, "ort-cpu", options=options)
    classifier = EmotionClassifier(dataclasses.replace(spec, tta="hflip"), backend)
    public = load_split(args.data, "public")
    probs = {"full": classifier.classify(list(public.faces))}
    for name, view in VIEWS.items():
        probs[name] = classifier.classify(list(np.ascontiguousarray(view(public.faces))))
    for set_name, extra in VIEW_SETS.items():
        total = probs["full"] + sum((probs[name] for name in extra), np.zeros_like(probs["full"]))
        top1 = float((total.argmax(axis=1) == public.labels).mean())
        print(json.dumps({"views": set_name, "public_top1": round(top1, 4),
                          "passes_per_face": 2 * (1 + len(extra)) * spec.members}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
