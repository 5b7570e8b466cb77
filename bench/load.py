"""The whole service under load on loopback: concurrent uploads and timeline reads, then every job accounted for.

    .venv/bin/python bench/load.py [--uploads 200] [--reads 2000] [--read-threads 20] [--workers 2]
                                   [--api-workers 1] [--fps 5] [--idle-reads 100] [--timeout 600]

The real parts: `fervid api` (uvicorn) and `fervid worker` processes (concurrency 1 each, the cores split between
them), a scratch PostgreSQL database (FERVID_TEST_PG_URL), Redis (FERVID_TEST_REDIS_URL, a queue of its own),
the shipped model and YuNet (../shared/models). `--uploads` tiny media made by bench/media_factory.py (half 160x96
PNG stills, half 1-second clips) are POSTed at once from as many threads, spread over four tenants, each with a
webhook to a loopback receiver; then `--read-threads` threads make `--reads` timeline reads of random jobs while
the workers process them; then, with the service idle, `--idle-reads` reads from one thread are the baseline.

Fails (exit 1) unless: every upload answered 202 and every read 200 (no 5xx, no connection errors); every job
ended succeeded with its sampled frames stored once (1 per still, one per 1/fps of a clip) and each of its segments
done; every job's webhook came exactly once (one event, repeats of an event aside), signed, verifying under each
webhook key version. Prints p50/p99 latency per request kind, throughput, and the CPU.
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from bench.media_factory import write_still, write_video  # noqa: E402
from bench.store_bench import create_database, drop_database  # noqa: E402
from fervid.db import session_scope  # noqa: E402
from fervid.lifecycle import ACTIVE_JOB_STATUSES, SegmentStatus  # noqa: E402
from fervid.migrate import upgrade  # noqa: E402
from fervid.settings import get_settings  # noqa: E402
from fervid.tables import Frame, Job, Segment  # noqa: E402
from fervid.webhooks import SIGNATURE_HEADER, tenant_signing_key, verify  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402

REDIS_URL = os.environ.get("FERVID_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TENANTS = ("load-a", "load-b", "load-c", "load-d")
CLIP_SECONDS, CLIP_FPS = 1, 24


@dataclass(frozen=True)
class Upload:
    """One submission: what is sent, and what its job must end with."""

    number: int
    tenant: str
    filename: str
    media: bytes
    frames: int  # sampled frames its timeline must hold


@dataclass
class Outcome:
    """What the clients saw: latencies per request kind, and every answer that was not the expected one."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, kind: str, expected: int, send: Callable[[], httpx.Response]) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = send()
        except httpx.TransportError as error:  # refused, reset, timed out: the service did not hold
            with self.lock:
                self.errors.append(f"{kind}: {type(error).__name__}: {error}")
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        with self.lock:
            self.latencies_ms[kind].append(elapsed_ms)
            if response.status_code != expected:
                self.errors.append(f"{kind}: HTTP {response.status_code} {response.text[:200]}")
        return response if response.status_code == expected else None


class WebhookReceiver:
    """A loopback HTTP server that answers 204 and keeps each POST (signature header and raw body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        received, lock = self.received, threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    received.append((self.headers.get(SIGNATURE_HEADER, ""), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sampled_frames(seconds: float, fps: float) -> int:
    # The sampling rule: k = 0, 1, ... while k/F < duration.
    return math.ceil(seconds * fps - 1e-9)


def make_uploads(count: int, fps: float, scratch: Path) -> list[Upload]:
    still = write_still(scratch / "still.png").read_bytes()
    clip = write_video(scratch / "clip.mp4", frame_count=CLIP_SECONDS * CLIP_FPS, fps=CLIP_FPS).read_bytes()
    uploads = []
    for number in range(count):
        tenant = TENANTS[number % len(TENANTS)]
        if number % 2 == 0:
            uploads.append(Upload(number, tenant, "still.png", still, 1))
        else:
            uploads.append(Upload(number, tenant, "clip.mp4", clip, sampled_frames(CLIP_SECONDS, fps)))
    return uploads


@contextmanager
def service(env: dict[str, str], workers: int, api_workers: int, scratch: Path) -> Iterator[str]:
    """`fervid api` and `workers` `fervid worker` processes on `env`; yields the API's base URL once /readyz
    lists every worker process (models loaded)."""
    port = free_port()
    logs = [(scratch / "api.log").open("wb")]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "fervid.cli", "api", "--port", str(port), "--workers", str(api_workers),
         "--log-level", "warning"], env={**os.environ, **env}, stdout=logs[0], stderr=subprocess.STDOUT, cwd=ROOT)]
    for index in range(workers):
        logs.append((scratch / f"worker-{index}.log").open("wb"))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "fervid.cli", "worker", "--concurrency", "1", "--loglevel", "WARNING"],
            env={**os.environ, **env}, stdout=logs[-1], stderr=subprocess.STDOUT, cwd=ROOT))
    base = f"http://127.0.0.1:{port}"

    def logs_tail() -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(scratch.glob("*.log")))

    try:
        deadline = time.monotonic() + 600.0  # a cold model cache: each worker's INT8 self-check, on busy cores
        ready: httpx.Response | None = None
        while True:
            if any(process.poll() is not None for process in processes):
                raise SystemExit(f"bench/load.py: a service process exited:\n{logs_tail()}")
            try:
                ready = httpx.get(f"{base}/readyz", timeout=5)
                if ready.status_code == 200 and len(ready.json()["workers"]) >= workers:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"bench/load.py: the service was not ready within 600 s "
                                 f"({ready.text if ready is not None else 'no answer'}):\n{logs_tail()}")
            time.sleep(0.5)
        yield base
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def submit_all(base: str, keys: dict[str, str], uploads: list[Upload], fps: float, webhook_url: str,
               outcome: Outcome) -> dict[str, Upload]:
    """Every upload at once, one thread each, released together; the accepted ones by their job's id."""
    accepted: dict[str, Upload] = {}
    start = threading.Barrier(len(uploads))
    limits = httpx.Limits(max_connections=len(uploads), max_keepalive_connections=len(uploads))
    with httpx.Client(base_url=base, limits=limits, timeout=120) as client:

        def submit(upload: Upload) -> None:
            start.wait()
            response = outcome.timed("upload (POST /v1/jobs)", 202, lambda: client.post(
                "/v1/jobs", headers={"Authorization": f"Bearer {keys[upload.tenant]}"},
                files={"file": (upload.filename, upload.media)},
                data={"sample_fps": str(fps), "client_request_token": f"load-{upload.number}",
                      "webhook_url": webhook_url}))
            if response is not None:
                accepted[response.json()["job_id"]] = upload

        with ThreadPoolExecutor(len(uploads)) as pool:
            list(pool.map(submit, uploads))
    return accepted


def read_timelines(base: str, keys: dict[str, str], jobs: list[tuple[str, Upload]], reads: int, threads: int,
                   kind: str, outcome: Outcome) -> None:
    """`reads` GET /v1/jobs/{id}/timeline of random jobs from `threads` threads; a page never holds more frames
    than its job samples."""
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(base_url=base, limits=limits, timeout=120) as client:

        def read(seed: int) -> None:
            job_id, upload = random.Random(seed).choice(jobs)
            response = outcome.timed(kind, 200, lambda: client.get(
                f"/v1/jobs/{job_id}/timeline", headers={"Authorization": f"Bearer {keys[upload.tenant]}"}))
            if response is not None and len(response.json()["items"]) > upload.frames:
                with outcome.lock:
                    outcome.errors.append(f"{kind}: job {job_id} shows {len(response.json()['items'])} frames, "
                                          f"more than its {upload.frames}")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, range(reads)))


def wait_finished(job_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as session:
            statuses = Counter(session.scalars(select(Job.status).where(Job.id.in_(job_ids))))
        if sum(statuses.values()) == len(job_ids) and not any(statuses[status] for status in ACTIVE_JOB_STATUSES):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/load.py: jobs not finished within {timeout_s:.0f} s: {dict(statuses)}")
        time.sleep(0.5)


def check_jobs(submitted: dict[str, Upload]) -> tuple[list[str], list[float], float]:
    """Problems with the stored jobs; each job's submit-to-finished seconds; the span from the first submission
    to the last finish."""
    problems: list[str] = []
    with session_scope() as session:
        rows = {job.id: job for job in session.scalars(select(Job).where(Job.tenant.in_(TENANTS)))}
        frames = dict(session.execute(select(Frame.job_id, func.count()).group_by(Frame.job_id)).all())
        segments: dict[str, Counter[str]] = defaultdict(Counter)
        for job_id, status in session.execute(select(Segment.job_id, Segment.status)):
            segments[job_id][status] += 1
    if extra := set(rows) - set(submitted):
        problems.append(f"{len(extra)} jobs stored that no accepted upload created: {sorted(extra)[:5]}")
    for job_id, upload in submitted.items():
        job = rows.get(job_id)
        if job is None:
            problems.append(f"job {job_id} (upload {upload.number}) lost: no row")
            continue
        if job.status != "succeeded":
            problems.append(f"job {job_id} ended {job.status}: {job.error_code} {job.error_message}")
        if frames.get(job_id, 0) != upload.frames or job.frames_total != upload.frames:
            problems.append(f"job {job_id}: {frames.get(job_id, 0)} frame rows, frames_total {job.frames_total}; "
                            f"{upload.frames} expected")
        if not segments[job_id] or set(segments[job_id]) != {SegmentStatus.done}:
            problems.append(f"job {job_id}: segments {dict(segments[job_id])}, not all done")
    done = [rows[job_id] for job_id in submitted if job_id in rows and rows[job_id].finished_at is not None]
    seconds = [(job.finished_at - job.created_at).total_seconds() for job in done if job.finished_at]
    span = (max(job.finished_at for job in done if job.finished_at) - min(job.created_at for job in done)
            ).total_seconds() if done else 0.0
    return problems, seconds, span


def check_webhooks(received: list[tuple[str, bytes]], submitted: dict[str, Upload],
                   webhook_secrets: dict[str, str]) -> list[str]:
    """Problems with the webhooks: each job's must come exactly once (one event id), signed under every key."""
    problems: list[str] = []
    events: dict[str, set[str]] = defaultdict(set)
    for signature, body in received:
        event = json.loads(body)
        job_id = event["job_id"]
        events[job_id].add(event["event_id"])
        upload = submitted.get(job_id)
        if upload is None:
            problems.append(f"webhook for unknown job {job_id}")
            continue
        for kid, secret in webhook_secrets.items():
            if not verify({kid: tenant_signing_key(secret, upload.tenant)}, signature, body, time.time()):
                problems.append(f"webhook for job {job_id} does not verify under key {kid}")
    problems += [f"job {job_id}: {len(events[job_id])} webhook events, 1 expected" for job_id in submitted
                 if len(events[job_id]) != 1]
    return problems


def percentile_row(kind: str, values: list[float], wall_s: float | None) -> str:
    p50, p99 = np.percentile(values, [50, 99]) if values else (math.nan, math.nan)
    rate = f"{len(values) / wall_s:8.1f}" if wall_s else f"{'':>8}"
    return f"{kind:<34} {len(values):>6} {p50:>9.1f} {p99:>9.1f} {max(values, default=math.nan):>9.1f} {rate}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=200, help="uploads sent at once (half stills, half clips)")
    parser.add_argument("--reads", type=int, default=2000, help="timeline reads while the workers process")
    parser.add_argument("--read-threads", type=int, default=20)
    parser.add_argument("--idle-reads", type=int, default=100, help="timeline reads from one thread, service idle")
    parser.add_argument("--workers", type=int, default=2, help="`fervid worker` processes (concurrency 1 each)")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--fps", type=float, default=5.0, help="sample_fps of every job")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the jobs may take to finish")
    args = parser.parse_args()
    yunet = SHARED / "models" / "face_detection_yunet_2023mar.onnx"
    if not yunet.is_file():
        print("bench/load.py: needs ../shared/models (YuNet); skipped")
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    keys = {tenant: secrets.token_urlsafe(32) for tenant in TENANTS}
    webhook_secrets = {"v2": secrets.token_urlsafe(32), "v1": secrets.token_urlsafe(32)}  # mid-rotation
    database_url = create_database()
    scratch_dir = tempfile.TemporaryDirectory()
    scratch = Path(scratch_dir.name)
    env = {
        "FERVID_DATABASE_URL": database_url, "FERVID_BROKER_URL": REDIS_URL,
        "FERVID_QUEUE": f"load-{uuid.uuid4().hex[:8]}", "FERVID_STORAGE_URL": (scratch / "storage").as_uri(),
        "FERVID_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in keys.items()),
        "FERVID_WEBHOOK_SECRETS": ",".join(f"{kid}:{secret}" for kid, secret in webhook_secrets.items()),
        "FERVID_ALLOW_PRIVATE_URLS": "true",  # the webhook receiver listens on loopback
        # Capacity is measured, not the limits: the limiter still counts every request in Redis.
        "FERVID_REQUESTS_PER_MINUTE": "1000000000", "FERVID_MAX_ACTIVE_JOBS": str(args.uploads),
        "FERVID_DETECTOR_PATH": str(yunet), "FERVID_DETECTOR_URL": "",
        "FERVID_INFERENCE_THREADS": str(max(1, cores // args.workers)),
    }
    os.environ.update(env)  # this process reads the jobs back from the same database
    get_settings.cache_clear()
    outcome = Outcome()
    receiver = WebhookReceiver()
    try:
        upgrade(database_url)
        uploads = make_uploads(args.uploads, args.fps, scratch)
        with service(env, args.workers, args.api_workers, scratch) as base:
            started = time.perf_counter()
            submitted = submit_all(base, keys, uploads, args.fps, receiver.url, outcome)
            upload_wall = time.perf_counter() - started
            started = time.perf_counter()
            read_timelines(base, keys, list(submitted.items()), args.reads, args.read_threads,
                           "timeline (GET), workers busy", outcome)
            read_wall = time.perf_counter() - started
            wait_finished(list(submitted), args.timeout)
            # Webhooks follow their job's end from their own queue; a few seconds more catch any repeat.
            deadline = time.monotonic() + 60.0
            while len(receiver.received) < len(submitted) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(3.0)
            started = time.perf_counter()
            read_timelines(base, keys, list(submitted.items()), args.idle_reads, 1, "timeline (GET), idle", outcome)
            idle_wall = time.perf_counter() - started
        job_problems, job_seconds, span_s = check_jobs(submitted)
        webhook_problems = check_webhooks(list(receiver.received), submitted, webhook_secrets)
    finally:
        receiver.close()
        drop_database(database_url)
        scratch_dir.cleanup()
    frames = sum(upload.frames for upload in submitted.values())
    stills = sum(upload.filename == "still.png" for upload in submitted.values())
    print(f"CPU: {read_cpu_features().describe()}; {cores} usable cores")
    print(f"service: {args.api_workers} API process(es), {args.workers} worker process(es) x "
          f"{env['FERVID_INFERENCE_THREADS']} inference thread(s), PostgreSQL, Redis, loopback")
    print(f"load: {args.uploads} uploads at once ({stills} 160x96 PNG stills, {len(submitted) - stills} "
          f"{CLIP_SECONDS}-s clips at {args.fps:g} fps sampled), then {args.reads} timeline reads from "
          f"{args.read_threads} threads while the workers process, then {args.idle_reads} from 1 thread, idle")
    print(f"\n{'request':<34} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'req/s':>8}")
    walls = {"upload (POST /v1/jobs)": upload_wall, "timeline (GET), workers busy": read_wall,
             "timeline (GET), idle": idle_wall}
    for kind, wall in walls.items():
        print(percentile_row(kind, outcome.latencies_ms[kind], wall))
    print(percentile_row("job, submitted -> finished", [s * 1000.0 for s in job_seconds], None))
    busy, idle = outcome.latencies_ms["timeline (GET), workers busy"], outcome.latencies_ms["timeline (GET), idle"]
    if busy and idle:
        print(f"\ntimeline p50 with the workers busy: x{np.median(busy) / np.median(idle):.2f} the idle p50")
    if span_s:
        print(f"processing: {len(job_seconds)} jobs, {frames} sampled frames in {span_s:.1f} s from the first "
              f"submission to the last finish: {len(job_seconds) / span_s:.2f} jobs/s, {frames / span_s:.1f} "
              "frames/s")
    problems = outcome.errors + job_problems + webhook_problems
    print(f"\nchecks: {len(submitted)} of {args.uploads} uploads accepted; {len(outcome.errors)} request errors "
          f"(non-2xx expected status or connection); {len(job_problems)} job problems; {len(webhook_problems)} "
          f"webhook problems ({len(receiver.received)} webhooks received, signed under "
          f"{', '.join(webhook_secrets)})")
    for problem in problems[:20]:
        print(f"  {problem}")
    if problems or len(submitted) != args.uploads:
        print("FAILED")
        return 1
    print("OK: no errors, every job finished exactly once with its rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
