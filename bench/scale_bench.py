"""One long video on one worker process vs two, through the real service path, measured in the same run.

    .venv/bin/python bench/scale_bench.py [--loops 20] [--fps 5] [--segment-seconds 4] [--size 1280x720] [--pin]

Real Redis (FERVID_TEST_REDIS_URL, default redis://127.0.0.1:6379/15, its own queue) and a scratch PostgreSQL
database (FERVID_TEST_PG_URL); `fervid worker` subprocesses, warmed up before timing. Each configuration analyses
the same clip (../shared/media/single_face.mp4 played --loops times); the time is the job's own, from created_at
to finished_at. Prints seconds per configuration and the speed-up of two single-threaded worker processes over one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_bench import create_database, drop_database  # noqa: E402

from bench.media_factory import write_looped_clip  # noqa: E402
from fervid import jobs  # noqa: E402
from fervid.db import session_scope  # noqa: E402
from fervid.migrate import upgrade  # noqa: E402
from fervid.queue import celery_app  # noqa: E402
from fervid.settings import get_settings  # noqa: E402
from fervid.tables import Job  # noqa: E402

REDIS_URL = os.environ.get("FERVID_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def run_job(clip: Path, fps: float, timeout: float = 900.0) -> float:
    with session_scope() as session:
        job, _ = jobs.create_job(session, tenant="bench", queue=get_settings().queue, source_uri=clip.as_uri(),
                                 sample_fps=fps, tasks_per_tenant=get_settings().tasks_per_tenant,
                                 frames_reserved=jobs.reserved_frames(fps, get_settings().max_duration_s))
        job_id = job.id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            row = session.get(Job, job_id)
            assert row is not None
            if row.status in ("succeeded", "failed", "cancelled"):
                if row.status != "succeeded":
                    raise SystemExit(f"bench job ended {row.status}: {row.error_code} {row.error_message}")
                assert row.finished_at is not None
                return (row.finished_at - row.created_at).total_seconds()
        time.sleep(0.2)
    raise SystemExit(f"bench job {job_id} did not finish in {timeout:.0f} s")


def start_workers(count: int, threads: int, env: dict[str, str], log_dir: Path,
                  pinned: bool = False) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes with `threads` inference threads each; `pinned`: worker i on core i alone
    (`taskset`), as if each were a one-core host, its threads left for the product to choose."""
    processes = []
    for index in range(count):
        log = (log_dir / f"worker-{count}-{threads}-{index}.log").open("wb")
        command = [sys.executable, "-m", "fervid.cli", "worker", "--concurrency", "1", "--loglevel", "WARNING"]
        worker_env = {**os.environ, **env}
        if pinned:
            command = ["taskset", "-c", str(index), *command]
            worker_env.pop("FERVID_INFERENCE_THREADS", None)
        else:
            worker_env["FERVID_INFERENCE_THREADS"] = str(threads)
        processes.append(subprocess.Popen(command, env=worker_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    return processes


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loops", type=int, default=20, help="times the 2.4 s clip is repeated (20: 48 s)")
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of the long clip (default: the source's)")
    parser.add_argument("--pin", action="store_true",
                        help="each worker pinned to its own core with taskset, threads as the product picks them "
                             "(one process per core, as on one-core hosts); configurations 1 and 2 workers")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    source = SHARED / "media" / "single_face.mp4"
    yunet = SHARED / "models" / "face_detection_yunet_2023mar.onnx"
    if not source.is_file():
        print("bench/scale_bench.py: needs ../shared/media; skipped")
        return 0
    database_url = create_database()
    scratch_dir = tempfile.TemporaryDirectory()
    scratch = scratch_dir.name
    # the clips are file:// sources in the scratch folder, which the workers may read only where it is opened to them
    env = {"FERVID_DATABASE_URL": database_url, "FERVID_BROKER_URL": REDIS_URL,
           "FERVID_QUEUE": f"bench-{uuid.uuid4().hex[:8]}", "FERVID_SEGMENT_SECONDS": str(args.segment_seconds),
           "FERVID_DETECTOR_PATH": str(yunet), "FERVID_FILE_URI_ROOTS": scratch}
    os.environ.update(env)
    get_settings.cache_clear()
    celery_app.cache_clear()
    report: dict[str, object] = {}
    try:
        upgrade(database_url)
        with scratch_dir:
            clip = write_looped_clip(source, Path(scratch) / "long.mp4", loops=args.loops, size=size)  # type: ignore[arg-type]
            warm = write_looped_clip(source, Path(scratch) / "warm.mp4", loops=4)  # spans several segments
            # (worker processes, inference threads each): one process per core is the scale-out layout; one
            # process with two threads shows what threads alone give on the same cores.
            layouts = ((1, 1), (2, 1)) if args.pin else ((1, 1), (2, 1), (1, 2))
            for workers, threads in layouts:
                processes = start_workers(workers, threads, env, Path(scratch), pinned=args.pin)
                try:
                    run_job(warm, args.fps)  # every worker has loaded its models by the time this finishes
                    seconds = run_job(clip, args.fps)
                finally:
                    stop_workers(processes)
                report[f"{workers}_workers_{threads}_threads_s"] = round(seconds, 2)
                print(f"{workers} worker process(es) x {threads} thread(s): {seconds:.2f} s", flush=True)
        one, two = report["1_workers_1_threads_s"], report["2_workers_1_threads_s"]
        assert isinstance(one, float) and isinstance(two, float)
        report["speedup_2_workers_over_1"] = round(one / two, 2)
        report["clip_seconds"] = round(2.4 * args.loops, 1)
        report["sampled_frames"] = int(2.4 * args.loops * args.fps)
        print(json.dumps(report, indent=1))
    finally:
        drop_database(database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
