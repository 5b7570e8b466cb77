"""What FERVID_DETECT_MAX_SIDE costs a job: one 1080p clip analysed in process at each detector input size, rounds
interleaved, against the default's time.

    .venv/bin/python bench/detect_max_side.py [--sides 1280,1920] [--loops 10] [--fps 5] [--repeat 3]

The clip: ../shared/media/single_face.mp4 looped --loops times (2.4 s each) and resized to 1920x1080 (H.264).
Each run is `fervid analyze`'s pipeline (shipped model, YuNet from ../shared, a scratch SQLite database) with the
setting at that size; one warm-up run first. Recall at each size: bench/detect_recall.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.media_factory import write_looped_clip  # noqa: E402
from bench.shared_data import SHARED, with_shared_yunet  # noqa: E402
from fervid.settings import Settings  # noqa: E402
from worker.analyze_command import analyze_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="1280,1920")
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sides = [int(side) for side in args.sides.split(",")]
    with tempfile.TemporaryDirectory(prefix="fervid-detect-side-") as scratch:
        folder = Path(scratch)
        clip = write_looped_clip(SHARED / "media" / "single_face.mp4", folder / "clip.mp4", loops=args.loops,
                                 size=(1920, 1080))
        os.environ["FERVID_DATABASE_URL"] = f"sqlite:///{folder / 'bench.db'}"
        settings = {side: with_shared_yunet(Settings(detect_max_side=side)) for side in sides}
        analyze_file(clip, args.fps, settings[sides[0]], show_progress=False)  # warm-up
        times: dict[int, list[float]] = {side: [] for side in sides}
        for _ in range(args.repeat):
            for side in sides:
                started = time.perf_counter()
                analyze_file(clip, args.fps, settings[side], show_progress=False)
                times[side].append(time.perf_counter() - started)
    baseline = statistics.median(times[sides[0]])
    for side in sides:
        median = statistics.median(times[side])
        print(f"detect_max_side {side}: {', '.join(f'{t:.2f}' for t in times[side])} s, median {median:.2f} s, "
              f"x{median / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
