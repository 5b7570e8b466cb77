"""How small can the detector's input be? Two curves on FER-2013 PublicTest faces, and what they imply.

    .venv/bin/python bench/detect_size.py [--faces 1000] [--yunet PATH] [--clip PATH]

1. Classifier top-1 against the face's side in frame pixels: each face shrunk to S px, as a small face in a frame
   is, then classified as a job does (the crop is resized to the network's input).
2. YuNet recall against the face's side at the detector's input: each face (in its FER-2013 framing, the border
   made up from its edge pixels) set at F px in a grey frame, found or not.

A face the classifier cannot read (curve 1 below its plateau) is not worth finding, and a face that is readable
needs only the input size at which YuNet still finds it (curve 2), so the detector may shrink frames by
F_min / S_min. Last, YuNet's time per frame on a real clip at each scale (medians; noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.backends import select_backend  # noqa: E402
from models.classifier import EmotionClassifier  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.detectors import YuNetDetector  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402
from models.training.fer2013 import load_split  # noqa: E402

FACE_SIDES = (12, 16, 20, 24, 28, 32, 40, 48, 64, 96)
DETECT_SIDES = (10, 12, 14, 16, 20, 24, 32, 48, 96)
DEFAULT_YUNET = Path("../shared/models/face_detection_yunet_2023mar.onnx")


def shrink(face: NDArray[np.uint8], side: int) -> NDArray[np.uint8]:
    interpolation = cv2.INTER_AREA if side < face.shape[0] else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(face, (side, side), interpolation=interpolation), dtype=np.uint8)


def in_frame(face: NDArray[np.uint8], side: int) -> NDArray[np.uint8]:
    """The face at `side` px with half a face of made-up border around it, centred in a grey frame 6 faces wide."""
    small = shrink(face, side)
    pad = side // 2
    framed = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    frame = np.full((side * 6, side * 6), 128, np.uint8)
    top = (frame.shape[0] - framed.shape[0]) // 2
    frame[top : top + framed.shape[0], top : top + framed.shape[1]] = framed
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


def found_centre(detector: YuNetDetector, frame: NDArray[np.uint8], side: int) -> bool:
    centre = frame.shape[0] / 2
    return any(abs(d.box[0] + d.box[2] / 2 - centre) < side / 2 and abs(d.box[1] + d.box[3] / 2 - centre) < side / 2
               for d in detector.detect(frame))


def yunet_ms_per_frame(detector: YuNetDetector, frames: list[NDArray[np.uint8]], scale: float) -> float:
    resized = [np.asarray(cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)),
                                     interpolation=cv2.INTER_AREA), dtype=np.uint8) for f in frames]
    detector.detect(resized[0])
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for frame in resized:
            detector.detect(frame)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / len(frames)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--yunet", type=Path, default=DEFAULT_YUNET)
    parser.add_argument("--faces", type=int, default=1000, help="PublicTest faces per point (the first N)")
    parser.add_argument("--clip", type=Path, default=Path("../shared/media/single_face.mp4"))
    args = parser.parse_args()
    if not args.data.is_file() or not args.yunet.is_file():
        print(f"bench/detect_size.py: needs {args.data} and {args.yunet} (../shared); skipped")
        return 0
    print(f"CPU: {read_cpu_features().describe()}")
    public = load_split(args.data, "public")
    faces, labels = public.faces[: args.faces], public.labels[: args.faces]
    classifier = EmotionClassifier(read_model_spec(args.model), select_backend(args.model, "ort-cpu"))
    for side in FACE_SIDES:
        probs = classifier.classify([shrink(face, side) for face in faces])
        print(json.dumps({"curve": "classifier", "face_px_in_frame": side,
                          "top1": round(float((probs.argmax(1) == labels).mean()) * 100, 2)}), flush=True)
    detector = YuNetDetector(args.yunet)
    for side in DETECT_SIDES:
        recall = np.mean([found_centre(detector, in_frame(face, side), side) for face in faces])
        print(json.dumps({"curve": "yunet", "face_px_at_input": side, "recall": round(float(recall) * 100, 2)}),
              flush=True)
    if args.clip.is_file():
        capture = cv2.VideoCapture(str(args.clip))
        frames = []
        while len(frames) < 48:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(np.asarray(frame, dtype=np.uint8))
        for scale in (1.0, 0.75, 0.5, 0.375, 0.25):
            print(json.dumps({"curve": "yunet_time", "clip": str(args.clip), "scale": scale,
                              "ms_per_frame": round(yunet_ms_per_frame(detector, frames, scale), 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
