"""Accuracy experiment (not a speed benchmark): how should a detector's box be cropped for the classifier?

    .venv/bin/python bench/crop_framing.py [--splits public] [--fit-faces 2000] [--model models/fervid-emotion.onnx]
        [--detectors yunet] [--borders replicate] [--sweep 0.96:0,0.98:-0.026]

The network learnt FER-2013's framing; in a job it sees crops around a detector's boxes. Each FER-2013 face is
enlarged 3x and set in a canvas twice its size (the border filled by replicating or mirroring its edge pixels,
since the picture around a FER-2013 face is lost), then found by the product's detectors (YuNet, Haar) as a job
finds faces. Two steps:

1. Fit, on `train` faces (geometry only, no labels): the square around each detector's box that reproduces the
   FER-2013 crop, as medians over faces of FER-2013 side / box's longer side and of the offsets of the FER-2013
   centre from the box centre (same units): `models.network_io.Framing`.
2. Score, on each split asked for, the classifier (as jobs run it) on the faces each detector finds: the FER-2013
   crop itself ("direct", the ceiling), the crop used before it was measured (1.3x the box's longer side,
   centred), the framing the detector ships with (`FaceDetector.framing`), the fitted side centred on the box, and
   the fitted side and offsets.

Prints one JSON line per fit and per (detector, border, split). Filling the border is an approximation: crops larger
than the FER-2013 face show made-up surroundings, where a video frame shows real ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fervid.settings import get_settings  # noqa: E402
from models.backends import BackendOptions, select_backend  # noqa: E402
from models.classifier import EmotionClassifier  # noqa: E402
from models.detectors import FaceDetector, HaarDetector, YuNetDetector  # noqa: E402
from models.network_io import Framing, crop_face  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402
from models.training.fer2013 import Split, load_split  # noqa: E402
from models.training.fer_canvas import BORDERS, ENLARGE, find_face, in_canvas  # noqa: E402

PREVIOUS_SIDE = 1.3  # the crop jobs used before this measurement: a 15 % margin on each side of the box
DEFAULT_YUNET = Path("../shared/models/face_detection_yunet_2023mar.onnx")


@dataclasses.dataclass(frozen=True)
class Found:
    """A FER-2013 face set in a canvas, and the box a detector put on it."""

    index: int  # row in the split
    canvas: NDArray[np.uint8]  # BGR
    box: tuple[int, int, int, int]


def find_faces(detector: FaceDetector, split: Split, rows: NDArray[np.int64], border: int) -> list[Found]:
    """The faces of `rows` the detector finds, each with its canvas and box."""
    found = []
    for index in rows:
        canvas = in_canvas(split.faces[index], border)
        box = find_face(detector, canvas)
        if box is not None:
            found.append(Found(int(index), canvas, box))
    return found


def fit_side(found: list[Found], face_side: int) -> dict[str, float]:
    """Medians over faces, in units of the box's longer side: the FER-2013 crop's side and its centre's offset from
    the box centre (+: right, down)."""
    sides, offsets_x, offsets_y = [], [], []
    for item in found:
        x, y, w, h = item.box
        longer, centre = max(w, h), item.canvas.shape[0] / 2
        sides.append(face_side / longer)
        offsets_x.append((centre - (x + w / 2)) / longer)
        offsets_y.append((centre - (y + h / 2)) / longer)
    return {name: round(float(np.median(values)), 3)
            for name, values in (("side", sides), ("offset_x", offsets_x), ("offset_y", offsets_y))}


def top1(classifier: EmotionClassifier, crops: list[NDArray[np.uint8]], labels: NDArray[np.int64]) -> float:
    return round(float((classifier.classify(crops).argmax(1) == labels).mean()) * 100, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--yunet", type=Path, default=DEFAULT_YUNET)
    parser.add_argument("--splits", default="public", help="comma list of public, private")
    parser.add_argument("--fit-faces", type=int, default=2000, help="train faces the framing is fitted on")
    parser.add_argument("--borders", default=",".join(BORDERS), help=f"comma list of {', '.join(BORDERS)}")
    parser.add_argument("--detectors", default="yunet,haar", help="comma list of yunet, haar")
    parser.add_argument("--sweep", default="", help="extra framings scored beside the others, as a comma list of "
                        "side:dy (e.g. 0.96:0,0.98:-0.026); choose among them on public, report private")
    args = parser.parse_args()

    spec = read_model_spec(args.model)
    options = BackendOptions.from_settings(get_settings())
    classifier = EmotionClassifier(spec, select_backend(args.model, "ort-cpu", options=options))
    available: dict[str, Callable[[], FaceDetector]] = {"yunet": lambda: YuNetDetector(args.yunet),
                                                         "haar": HaarDetector}
    detectors = [available[name]() for name in args.detectors.split(",")]
    train = load_split(args.data, "train")
    fit_rows = np.random.default_rng(0).choice(len(train), min(args.fit_faces, len(train)), replace=False)
    face_side = train.faces.shape[1] * ENLARGE
    fitted: dict[str, Framing] = {}
    for detector in detectors:
        found = find_faces(detector, train, fit_rows, BORDERS["replicate"])
        fit = fit_side(found, face_side)
        fitted[detector.name] = Framing(side=fit["side"], dx=fit["offset_x"], dy=fit["offset_y"])
        print(json.dumps({"fit": detector.name, "train_faces": len(fit_rows), "found": len(found), **fit}),
              flush=True)

    for split_name in args.splits.split(","):
        split = load_split(args.data, split_name)
        rows = np.arange(len(split))
        for detector in detectors:
            for border_name in args.borders.split(","):
                found = find_faces(detector, split, rows, BORDERS[border_name])
                labels = split.labels[[item.index for item in found]]
                direct = top1(classifier, [split.faces[item.index] for item in found], labels)
                fit = fitted[detector.name]
                framings = {"previous": Framing(side=PREVIOUS_SIDE), "shipped": detector.framing,
                            "fitted_side": Framing(side=fit.side), "fitted": fit}
                for point in filter(None, args.sweep.split(",")):
                    side, dy = point.split(":")
                    framings[f"side {side} dy {dy}"] = Framing(side=float(side), dy=float(dy))
                scores = {framing: top1(classifier, [crop_face(item.canvas, item.box, framing) for item in found],
                                        labels)
                          for framing in set(framings.values())}
                print(json.dumps({
                    "split": split_name, "detector": detector.name, "border": border_name, "faces": len(split),
                    "found": len(found), "direct": direct,
                    **{name: scores[framing] for name, framing in framings.items()},
                }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
