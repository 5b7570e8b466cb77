"""Annotated video against the job's own analysis: the render must take at most 2x the analysis of the same clip.

    .venv/bin/python bench/annotate_bench.py [--seconds 60] [--size 640x480] [--fps 5] [--repeat 2]

The clip: ../shared/media/single_face.mp4 (a real face, 30 fps) looped to --seconds and resized to --size (H.264).
analysis: `fervid analyze`'s pipeline in this process (shipped model, ONNX Runtime on the CPU, YuNet from ../shared,
          a scratch SQLite database) at --fps, timed from the job's start to its end.
render:   worker/annotate.write_annotated on the job just analysed: every frame decoded in a decoder process,
          painted and encoded (H.264, this process's cores), timed whole; the video is then checked to have the
          clip's frame count and size.
Prints each run and the ratio render / analysis (target <= 2.0). Run it alone on the machine: both use every core.
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

import av  # noqa: E402

from bench.media_factory import write_looped_clip  # noqa: E402
from bench.shared_data import SHARED, with_shared_yunet  # noqa: E402
from fervid.settings import Settings  # noqa: E402
from worker.analyze_command import analyze_file, job_failure  # noqa: E402
from worker.annotate import write_annotated  # noqa: E402
from worker.layout import usable_cores  # noqa: E402
from worker.media.limits import MediaLimits  # noqa: E402

SOURCE = SHARED / "media" / "single_face.mp4"
SOURCE_SECONDS = 2.4


def frame_count_and_size(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = [frame for frame in container.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not SOURCE.is_file():
        print(f"needs {SOURCE}", file=sys.stderr)
        return 2
    width, height = (int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="fervid-annotate-bench-") as scratch:
        folder = Path(scratch)
        clip = write_looped_clip(SOURCE, folder / "clip.mp4", loops=round(args.seconds / SOURCE_SECONDS),
                                 size=(width, height))
        os.environ["FERVID_DATABASE_URL"] = f"sqlite:///{folder / 'bench.db'}"
        settings = with_shared_yunet(Settings())
        expected = frame_count_and_size(clip)
        print(f"clip: {expected[0]} frames {expected[1]}x{expected[2]}; {usable_cores()} usable cores")
        ratios = []
        for run in range(args.repeat):
            started = time.perf_counter()
            job_id = analyze_file(clip, args.fps, settings, show_progress=False)
            analysis_s = time.perf_counter() - started
            failure = job_failure(job_id)
            if failure is not None:
                raise failure
            out = folder / f"annotated-{run}.mp4"
            started = time.perf_counter()
            write_annotated(clip, out, job_id, MediaLimits.from_settings(settings), settings.decode_memory_mb,
                            threads=usable_cores())
            render_s = time.perf_counter() - started
            assert frame_count_and_size(out) == expected, (frame_count_and_size(out), expected)
            ratios.append(render_s / analysis_s)
            print(f"run {run}: analysis {analysis_s:.1f} s, render {render_s:.1f} s, render/analysis "
                  f"{ratios[-1]:.2f}, {out.stat().st_size / 1e6:.1f} MB")
        print(f"render / analysis: median {statistics.median(ratios):.2f} (target <= 2.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
