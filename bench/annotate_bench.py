"""Annotated video against the job's own analysis: the render must take at most 2x the analysis of the same clip.

    .venv/bin/python bench/annotate_bench.py [--seconds 60] [--size 640x480] [--fps 5] [--repeat 2] [--service]

The clip: ../shared/media/single_face.mp4 (a real face, 30 fps) looped to --seconds and resized to --size (H.264).
analysis: `fervid analyze`'s pipeline in this process (shipped model, ONNX Runtime on the CPU, YuNet from ../shared,
          a scratch SQLite database) at --fps, timed from the job's start to its end.
render:   worker/annotate.write_annotated on the job just analysed: every frame decoded in a decoder process,
          painted and encoded (H.264, this process's cores), timed whole; the video is then checked to have the
          clip's frame count and size.
--service: the same through the service path instead: one `fervid worker` (concurrency 1) on the local Redis and a
          scratch PostgreSQL database (as bench/scale_bench.py), warmed up on a short job; the job's own time
          (created_at to finished_at), then the annotated video asked for as the API asks (fervid.annotated.request,
          the task on the job's queue) and timed until its row says ready.
Prints each run and the ratio render / analysis (target <= 2.0). Run it alone on the machine: both use every core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import av  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.media_factory import write_looped_clip  # noqa: E402
from bench.shared_data import SHARED, SHARED_YUNET, with_shared_yunet  # noqa: E402
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


def service_run(clip: Path, fps: float, timeout_s: float = 900.0) -> tuple[float, float]:
    """(the job's own seconds, seconds from asking for its annotated video to its being ready), on the running
    worker."""
    from scale_bench import run_job

    from fervid import annotated
    from fervid.db import session_scope
    from fervid.queue import send_render_annotated
    from fervid.tables import AnnotatedVideo, Job

    analysis_s = run_job(clip, fps, timeout_s)
    with session_scope() as session:
        job = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(1)).one()
        asked = time.perf_counter()
        render = annotated.request(session, job, stale_after_s=600, max_stored_bytes=1 << 40)
        job_id, queue, duration_ms = job.id, job.queue, job.duration_ms
    send_render_annotated(job_id, render.token, queue, *annotated.render_limits_s(duration_ms))
    while time.perf_counter() - asked < timeout_s:
        with session_scope() as session:
            row = session.get(AnnotatedVideo, job_id)
            assert row is not None
            if row.status != annotated.RenderStatus.rendering:
                if row.status != annotated.RenderStatus.ready:
                    raise SystemExit(f"render failed: {row.error_code} {row.error_message}")
                return analysis_s, time.perf_counter() - asked
        time.sleep(0.1)
    raise SystemExit(f"the annotated video of {job_id} was not ready in {timeout_s:.0f} s")


def main_service(clip: Path, fps: float, repeat: int, folder: Path) -> list[float]:
    from scale_bench import REDIS_URL, run_job, start_workers, stop_workers
    from store_bench import create_database, drop_database

    from fervid.migrate import upgrade
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    database_url = create_database()
    env = {"FERVID_DATABASE_URL": database_url, "FERVID_BROKER_URL": REDIS_URL,
           "FERVID_QUEUE": f"bench-{uuid.uuid4().hex[:8]}", "FERVID_DETECTOR_PATH": str(SHARED_YUNET),
           "FERVID_FILE_URI_ROOTS": str(folder), "FERVID_STORAGE_URL": (folder / "storage").as_uri()}
    os.environ.update(env)
    get_settings.cache_clear()
    celery_app.cache_clear()
    ratios = []
    try:
        upgrade(database_url)
        workers = start_workers(1, max(1, usable_cores() - 1), env, folder)
        try:
            run_job(write_looped_clip(SOURCE, folder / "warm.mp4", loops=2), fps)  # models loaded
            for run in range(repeat):
                analysis_s, render_s = service_run(clip, fps)
                ratios.append(render_s / analysis_s)
                print(f"service run {run}: job {analysis_s:.1f} s, annotated video ready {render_s:.1f} s after "
                      f"it was asked for, render/job {ratios[-1]:.2f}", flush=True)
        finally:
            stop_workers(workers)
    finally:
        drop_database(database_url)
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--service", action="store_true", help="through a real worker, Redis and PostgreSQL")
    args = parser.parse_args()
    if not SOURCE.is_file():
        print(f"needs {SOURCE}", file=sys.stderr)
        return 2
    width, height = (int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="fervid-annotate-bench-") as scratch:
        folder = Path(scratch)
        clip = write_looped_clip(SOURCE, folder / "clip.mp4", loops=round(args.seconds / SOURCE_SECONDS),
                                 size=(width, height))
        if args.service:
            ratios = main_service(clip, args.fps, args.repeat, folder)
            print(f"render / job, service path: median {statistics.median(ratios):.2f} (target <= 2.0)")
            return 0
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
