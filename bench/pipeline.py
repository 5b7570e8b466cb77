"""Pipeline throughput on a real clip, with its decode-only baseline measured in the same run.

    .venv/bin/python bench/pipeline.py [--clip PATH] [--fps 5] [--repeat 3]

Prints decode-only frames/s, end-to-end sampled frames/s and faces/s, and end-to-end time / decode-only time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shared_data import SHARED, with_shared_yunet  # noqa: E402
from fervid.settings import get_settings  # noqa: E402
from worker.media.decode import decode_planned  # noqa: E402
from worker.media.limits import MediaLimits  # noqa: E402
from worker.media.probe import probe  # noqa: E402
from worker.pipeline import build_analyzer  # noqa: E402


def decode_all(clip: Path) -> int:
    """Every frame decoded and converted to BGR: the floor any pipeline on this clip pays."""
    frames = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")
            frames += 1
    return frames


def best_of(repeat: int, work):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", type=Path, default=SHARED / "media" / "single_face.mp4")
    parser.add_argument("--fps", type=float, default=5.0, help="sampling rate of the end-to-end run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-model", type=Path, default=None,
                        help="another classifier ONNX timed end to end in the same run (e.g. the previous model)")
    args = parser.parse_args()
    if not args.clip.is_file():
        print(f"bench/pipeline.py: {args.clip} not found (needs ../shared/media); skipped")
        return 0
    settings = with_shared_yunet(get_settings())
    analyzer = build_analyzer(settings)
    info, plan = probe(args.clip, args.fps, MediaLimits.from_settings(settings))

    decode_best, decode_median, decoded = best_of(args.repeat, lambda: decode_all(args.clip))

    def end_to_end(runner: Any = analyzer) -> tuple[int, int]:
        records = runner.analyze(decode_planned(args.clip, plan, [], settings.max_pixels))
        return len(records), sum(len(r.faces) for r in records)

    analyzer.analyze(decode_planned(args.clip, plan[:2], [], settings.max_pixels))  # warm-up: first inference allocates
    e2e_best, e2e_median, (sampled, faces) = best_of(args.repeat, end_to_end)
    baseline: dict[str, Any] | None = None
    if args.baseline_model is not None:
        other = build_analyzer(settings.model_copy(update={"model_path": args.baseline_model}))
        other.analyze(decode_planned(args.clip, plan[:2], [], settings.max_pixels))
        other_best, _, _ = best_of(args.repeat, lambda: end_to_end(other))
        baseline = {"model": other.model_info.name, "version": other.model_info.version,
                    "end_to_end_faces_per_s": round(faces / other_best, 1),
                    "end_to_end_time_over_baseline": round(e2e_best / other_best, 2)}
    report = {
        "clip": str(args.clip), "frames": decoded, "sampled_frames": sampled, "faces": faces,
        "sample_fps": args.fps, "model": analyzer.model_info.name, "backend": analyzer.model_info.backend,
        "detector": analyzer.detector.name,
        "decode_only_frames_per_s": round(decoded / decode_best, 1),
        "end_to_end_sampled_frames_per_s": round(sampled / e2e_best, 1),
        "end_to_end_faces_per_s": round(faces / e2e_best, 1),
        "end_to_end_over_decode_only": round(e2e_best / decode_best, 2),
        "seconds": {"decode_best": round(decode_best, 4), "decode_median": round(decode_median, 4),
                    "end_to_end_best": round(e2e_best, 4), "end_to_end_median": round(e2e_median, 4)},
        "baseline_model": baseline,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
