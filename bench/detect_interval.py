"""What detecting faces only every so many ms costs (FERVID_DETECT_INTERVAL_MS), in boxes, emotions and time.

    .venv/bin/python bench/detect_interval.py [--intervals 0,50,100,150,200] [--clips A.mp4,B.mov]

Each clip (default: the clips of ../shared/media with faces, 26-30 fps) is analysed at every frame, once per
interval; the faces of skipped frames are carried from the detected frames around them
(`worker.pipeline.carried_faces`). Against interval 0 (every frame detected), per interval: box recall (its faces
matched at IoU >= 0.5), faces invented (carried faces matching none), the mean IoU of the matched boxes, top-1
emotion agreement of matched faces, the mean total-variation distance between their seven probabilities, and
agreement of each track's majority emotion (what a summary reports). Then the detector's calls and time, and the
whole analysis's time (medians; noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shared_data import SHARED, with_shared_yunet  # noqa: E402
from fervid.sampling import PlannedFrame  # noqa: E402
from fervid.settings import get_settings  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.detectors import Detection, FaceDetector  # noqa: E402
from worker.media.decode import decode_planned  # noqa: E402
from worker.media.limits import MediaLimits  # noqa: E402
from worker.media.probe import probe  # noqa: E402
from worker.pipeline import build_analyzer  # noqa: E402
from worker.records import FrameRecord  # noqa: E402
from worker.tracking import greedy_pairs, iou  # noqa: E402

DEFAULT_CLIPS = ("single_face.mp4", "face_noface.mov", "noface_face.mov")
MATCH_IOU = 0.5


class TimedDetector:
    """The real detector, timing its calls."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector, self.calls, self.seconds = detector, 0, 0.0
        self.name, self.reason, self.framing = detector.name, detector.reason, detector.framing

    def detect(self, image: NDArray[np.uint8]) -> list[Detection]:
        start = time.perf_counter()
        found = self.detector.detect(image)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return found


def majority(records: list[FrameRecord]) -> dict[int, int]:
    """Each track's most frequent top-1 emotion."""
    votes: dict[int, Counter[int]] = {}
    for record in records:
        for face in record.faces:
            votes.setdefault(face.local_track, Counter())[int(np.argmax(face.probs))] += 1
    return {track: counts.most_common(1)[0][0] for track, counts in votes.items()}


def compare(reference: list[FrameRecord], carried: list[FrameRecord]) -> dict[str, float]:
    matched = reference_faces = invented = top1_same = 0
    ious: list[float] = []
    distances: list[float] = []
    track_pairs: Counter[tuple[int, int]] = Counter()
    for ref, got in zip(reference, carried, strict=True):
        scores = [(iou(a.box, b.box), i, j) for i, a in enumerate(ref.faces) for j, b in enumerate(got.faces)]
        pairs = [(i, j) for i, j in greedy_pairs([s for s in scores if s[0] >= MATCH_IOU])]
        reference_faces += len(ref.faces)
        matched += len(pairs)
        invented += len(got.faces) - len(pairs)
        for i, j in pairs:
            a, b = ref.faces[i], got.faces[j]
            ious.append(iou(a.box, b.box))
            top1_same += int(np.argmax(a.probs) == np.argmax(b.probs))
            distances.append(0.5 * float(np.abs(np.subtract(a.probs, b.probs)).sum()))
            track_pairs[(a.local_track, b.local_track)] += 1
    # Each reference track's majority emotion against that of the carried track it mostly became.
    reference_majority, carried_majority = majority(reference), majority(carried)
    best: dict[int, int] = {}
    for ref_track, got_track in [pair for pair, _ in track_pairs.most_common()]:
        best.setdefault(ref_track, got_track)
    tracks_same = sum(reference_majority[t] == carried_majority.get(best.get(t, -1), -1) for t in reference_majority)
    return {"recall": matched / max(reference_faces, 1), "invented": invented,
            "mean_iou": statistics.fmean(ious or [0]),
            "top1_agreement": top1_same / max(matched, 1), "mean_tv": statistics.fmean(distances or [0]),
            "tracks_same_majority": tracks_same, "tracks": len(reference_majority), "faces": reference_faces}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", default="0,50,100,150,200", help="ms, comma-separated; the first is the "
                        "reference")
    parser.add_argument("--clips", default=",".join(str(SHARED / "media" / name) for name in DEFAULT_CLIPS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clips = [Path(clip) for clip in args.clips.split(",")]
    if not all(clip.is_file() for clip in clips):
        print(f"bench/detect_interval.py: clips not found ({args.clips}; needs ../shared/media); skipped")
        return 0
    settings = with_shared_yunet(get_settings())
    analyzer = build_analyzer(settings)
    limits = MediaLimits.from_settings(settings)
    intervals = [float(ms) for ms in args.intervals.split(",")]
    print(f"CPU: {read_cpu_features().describe()}, {os.cpu_count()} logical cores; detector {analyzer.detector.name}, "
          f"classifier {analyzer.classifier.backend.name} {analyzer.classifier.backend.precision}")
    frames: dict[Path, list[tuple[PlannedFrame, NDArray[np.uint8]]]] = {}
    for clip in clips:
        _, plan = probe(clip, 1000.0, limits)  # above any real rate: every frame
        frames[clip] = list(decode_planned(clip, plan, [], limits.max_pixels))
    print(f"clips: {', '.join(f'{clip.name} ({len(frames[clip])} frames)' for clip in clips)}")
    analyzer.analyze(frames[clips[0]][:4])  # warm-up: first inference allocates
    reference: dict[Path, list[FrameRecord]] = {}
    rows = []
    for k in intervals:
        totals: Counter[str] = Counter()
        weighted: dict[str, float] = {"mean_iou": 0.0, "top1_agreement": 0.0, "mean_tv": 0.0}
        timed = TimedDetector(analyzer.detector)
        every_k = dataclasses.replace(analyzer, detector=timed, detect_interval_ms=k)
        seconds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            results = {clip: every_k.analyze(frames[clip]) for clip in clips}
            seconds.append(time.perf_counter() - start)
        if k == intervals[0]:
            reference = results
        for clip in clips:
            figures = compare(reference[clip], results[clip])
            for key in ("invented", "tracks_same_majority", "tracks", "faces"):
                totals[key] += int(figures[key])
            totals["matched"] += round(figures["recall"] * figures["faces"])
            for key in weighted:
                weighted[key] += figures[key] * figures["recall"] * figures["faces"]
        matched = max(totals["matched"], 1)
        row = {"interval_ms": k, "box_recall": totals["matched"] / max(totals["faces"], 1),
               "invented": totals["invented"],
               "mean_iou": weighted["mean_iou"] / matched, "top1_agreement": weighted["top1_agreement"] / matched,
               "mean_tv": weighted["mean_tv"] / matched,
               "tracks_same_majority": f"{totals['tracks_same_majority']}/{totals['tracks']}",
               "detector_calls": timed.calls // args.repeat, "detector_s": timed.seconds / args.repeat,
               "analysis_s": statistics.median(seconds)}
        rows.append(row)
        print(f"every {k:g} ms: box recall {row['box_recall']:.1%}, {row['invented']} invented, "
              f"IoU {row['mean_iou']:.3f}, "
              f"top-1 agreement {row['top1_agreement']:.1%}, mean TV {row['mean_tv']:.3f}, "
              f"track majorities kept {row['tracks_same_majority']}; detector {row['detector_calls']} calls "
              f"{row['detector_s']:.2f} s; analysis {row['analysis_s']:.2f} s (median of {args.repeat}, "
              f"{min(seconds):.2f}-{max(seconds):.2f})")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
