"""How small can the detector's input be? Two curves on FER-2013 PublicTest faces, and what they imply.

    .venv/bin/python bench/detect_size.py [--faces 1000] [--yunet PATH] [--clip PATH]

1. Classifier top-1 against the face's side in frame pixels: each face shrunk to S px, as a small face in a frame
   is, then classified as a job does (the crop is resized to the network's input).
2. YuNet recall against the face's side at the detector's input, on real pictures (the stills and the first frame of
   each clip in ../shared/media, and matplotlib's portrait of Grace Hopper): each face YuNet finds at full size is
   looked for again in the picture shrunk step by step (found: IoU >= 0.5 with its full-size box). FER-2013 faces
   cannot stand in here: their tight framing without hair or ears is found far less often than real faces.

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

from fervid.settings import get_settings  # noqa: E402
from models.backends import BackendOptions, select_backend  # noqa: E402
from models.classifier import EmotionClassifier  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.detectors import Detection, YuNetDetector  # noqa: E402
from models.spec import DEFAULT_MODEL_PATH, read_model_spec  # noqa: E402
from models.training.commands.data_paths import DEFAULT_DATA_PATH  # noqa: E402
from models.training.fer2013 import load_split  # noqa: E402

FACE_SIDES = (12, 16, 20, 24, 28, 32, 40, 48, 64, 96)
DEFAULT_YUNET = Path("../shared/models/face_detection_yunet_2023mar.onnx")


def shrink(face: NDArray[np.uint8], side: int) -> NDArray[np.uint8]:
    interpolation = cv2.INTER_AREA if side < face.shape[0] else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(face, (side, side), interpolation=interpolation), dtype=np.uint8)


def iou(a: tuple[int, int, int, int], b: tuple[float, float, float, float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def real_pictures(media: Path) -> list[NDArray[np.uint8]]:
    from bench.portrait import portrait_image

    pictures = [portrait_image()]
    for path in sorted(media.glob("*")):
        if path.suffix.lower() in (".jpg", ".png"):
            pictures.append(np.asarray(cv2.imread(str(path)), dtype=np.uint8))
        elif path.suffix.lower() in (".mp4", ".mov"):
            capture = cv2.VideoCapture(str(path))
            for _ in range(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) // 2):  # mid-clip: faces that come later
                capture.grab()
            ok, frame = capture.read()
            if ok:
                pictures.append(np.asarray(frame, dtype=np.uint8))
    return pictures


def recall_by_input_size(detector: YuNetDetector, pictures: list[NDArray[np.uint8]]) -> dict[int, list[bool]]:
    """Face side at the detector's input (px, rounded to 2) -> found or not, for every face at every scale."""
    found: dict[int, list[bool]] = {}
    for picture in pictures:
        references = [d.box for d in detector.detect(picture)]
        for scale in np.geomspace(1.0, 0.03, 40):
            size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
            small = np.asarray(cv2.resize(picture, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
            boxes = [tuple(v / scale for v in d.box) for d in _detect_unfiltered(detector, small)]
            for box in references:
                side = 2 * round(max(box[2], box[3]) * scale / 2)
                found.setdefault(side, []).append(any(iou(box, other) >= 0.5 for other in boxes))  # type: ignore[arg-type]
    return found


def _detect_unfiltered(detector: YuNetDetector, image: NDArray[np.uint8]) -> list[Detection]:
    """YuNet's boxes on the image as given (no further scaling); the product's 16 px minimum face still applies."""
    return detector.detect_at(image, 1.0)


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
    backend = select_backend(args.model, "ort-cpu", options=BackendOptions.from_settings(get_settings()))
    classifier = EmotionClassifier(read_model_spec(args.model), backend)
    for side in FACE_SIDES:
        probs = classifier.classify([shrink(face, side) for face in faces])
        print(json.dumps({"curve": "classifier", "face_px_in_frame": side,
                          "top1": round(float((probs.argmax(1) == labels).mean()) * 100, 2)}), flush=True)
    detector = YuNetDetector(args.yunet)
    found = recall_by_input_size(detector, real_pictures(args.clip.parent))
    for side in sorted(found):
        if side <= 64:
            print(json.dumps({"curve": "yunet", "face_px_at_input": side, "faces": len(found[side]),
                              "recall": round(float(np.mean(found[side])) * 100, 1)}), flush=True)
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
