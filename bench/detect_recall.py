"""YuNet's recall on real faces of every size, in frames of every size, at the input scale and score threshold the
product uses (models/detectors.py), against detection at full size.

    .venv/bin/python bench/detect_recall.py [--yunet PATH] [--out runs/detect_recall.json]

The set: each real picture (the stills of ../shared/media, the middle frame of each clip with a face, matplotlib's
portrait of Grace Hopper), scaled so that its largest face's box is S px (16 to 320), placed in a frame of 320x240 to
1920x1080 with that face at the centre, against an edge, in a corner (the rest of the frame black), in colour and in
grey: thousands of faces, many per size. A face is found when a detection overlaps where it was placed (IoU >= 0.5).
Policies: the product's (`detector_scale`), the earlier 22/32 shrink (to at most 960 px), 960 px, full size. Then the
score threshold: recall at each threshold with the product's scale, and the false faces on every frame of the
faceless clip (../shared/media/no_face.mp4).
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

from bench.portrait import portrait_image  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.detectors import YUNET_SCORE_THRESHOLD, YuNetDetector, detector_scale  # noqa: E402

FACE_SIDES = (16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256, 320)
FRAMES = ((320, 240), (480, 360), (640, 360), (640, 480), (1280, 720), (1920, 1080))
PLACES = ("centre", "left", "right", "top-left", "bottom")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
LOWEST = min(THRESHOLDS)
DEFAULT_YUNET = Path("../shared/models/face_detection_yunet_2023mar.onnx")
BoxF = tuple[float, float, float, float]


def iou(a: BoxF, b: BoxF) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def pictures(media: Path) -> list[NDArray[np.uint8]]:
    found = [portrait_image()]
    for path in sorted(media.glob("*")):
        if path.suffix.lower() in (".jpg", ".png"):
            found.append(np.asarray(cv2.imread(str(path)), dtype=np.uint8))
        elif path.suffix.lower() in (".mp4", ".mov") and "no_face" not in path.name:
            capture = cv2.VideoCapture(str(path))
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            capture.set(cv2.CAP_PROP_POS_FRAMES, frames // 2 if "noface_face" not in path.name else frames - 10)
            ok, frame = capture.read()
            if ok:
                found.append(np.asarray(frame, dtype=np.uint8))
    return found


def placed(picture: NDArray[np.uint8], box: tuple[int, int, int, int], side: int, frame: tuple[int, int],
           place: str) -> tuple[NDArray[np.uint8], BoxF]:
    """The picture scaled so `box` is `side` px, in a black frame of `frame` (w, h) with the face at `place`."""
    k = side / max(box[2], box[3])
    scaled = cv2.resize(picture, None, fx=k, fy=k, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    fx, fy, fw, fh = box[0] * k, box[1] * k, box[2] * k, box[3] * k
    width, height = frame
    margin = 4
    target_x = {"centre": (width - fw) / 2, "left": margin, "right": width - fw - margin, "top-left": margin,
                "bottom": (width - fw) / 2}[place]
    target_y = {"centre": (height - fh) / 2, "left": (height - fh) / 2, "right": (height - fh) / 2,
                "top-left": margin, "bottom": height - fh - margin}[place]
    ox, oy = round(fx - target_x), round(fy - target_y)
    canvas = np.zeros((height, width, 3), np.uint8)
    sx0, sy0 = max(0, ox), max(0, oy)
    sx1, sy1 = min(scaled.shape[1], ox + width), min(scaled.shape[0], oy + height)
    canvas[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = scaled[sy0:sy1, sx0:sx1]
    return canvas, (fx - ox, fy - oy, fw, fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yunet", type=Path, default=DEFAULT_YUNET)
    parser.add_argument("--media", type=Path, default=Path("../shared/media"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    detector = YuNetDetector(args.yunet, score_threshold=LOWEST)
    policies = {"product": detector_scale,
                # before 2026-12-05: shrunk by 22/32, to at most 960 px
                "22/32, 960 px": lambda h, w: min(22 / 32, 960 / max(h, w)),
                "960 px": lambda h, w: min(1.0, 960 / max(h, w)),
                "full size": lambda h, w: 1.0}
    # policy -> face side -> [found at each threshold] per face
    found: dict[str, dict[int, list[list[bool]]]] = {name: {side: [] for side in FACE_SIDES} for name in policies}
    print(f"CPU: {read_cpu_features().describe()}", flush=True)
    for picture in pictures(args.media):
        faces = detector.detect_at(picture, 1.0)
        if not faces:
            continue
        box = max(faces, key=lambda face: face.box[2] * face.box[3]).box
        for side in FACE_SIDES:
            for frame in FRAMES:
                if side > min(frame) - 8:
                    continue
                for place in PLACES:
                    for grey in (False, True):
                        image, truth = placed(picture, box, side, frame, place)
                        if grey:
                            image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
                        for name, policy in policies.items():
                            detections = detector.detect_at(image, policy(*image.shape[:2]))
                            best = max((d.score for d in detections if iou(d.box, truth) >= 0.5), default=0.0)
                            found[name][side].append([best >= threshold for threshold in THRESHOLDS])
    at_product = THRESHOLDS.index(YUNET_SCORE_THRESHOLD)
    report: dict[str, Any] = {"cpu": read_cpu_features().describe(), "thresholds": THRESHOLDS, "recall": {}}
    for name, by_side in found.items():
        rows = {side: np.asarray(values) for side, values in by_side.items() if values}
        report["recall"][name] = {side: [round(float(v), 4) for v in values.mean(axis=0)]
                                  for side, values in rows.items()}
        total = np.concatenate(list(rows.values()))
        print(f"{name:>13}: recall at {YUNET_SCORE_THRESHOLD} over {len(total)} faces "
              f"{total[:, at_product].mean():.2%}; by side "
              + ", ".join(f"{side}: {values[:, at_product].mean():.0%}" for side, values in rows.items()), flush=True)
    # False faces: every frame of the faceless clip.
    false_faces = np.zeros(len(THRESHOLDS), np.int64)
    frames_seen = 0
    capture = cv2.VideoCapture(str(args.media / "no_face.mp4"))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames_seen += 1
        scores = [d.score for d in detector.detect(frame)]
        false_faces += np.array([sum(score >= threshold for score in scores) for threshold in THRESHOLDS])
    report["false_faces"] = {"frames": frames_seen, "by_threshold": dict(zip(THRESHOLDS, false_faces.tolist(),
                                                                                strict=True))}
    product = np.concatenate([np.asarray(v) for v in found["product"].values() if v])
    print("threshold: " + "; ".join(f"{threshold}: recall {product[:, i].mean():.2%}, false faces {false_faces[i]} "
                                    f"in {frames_seen} faceless frames" for i, threshold in enumerate(THRESHOLDS)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
