"""Cold start: from starting the service to its first job's result, with nothing cached, against a warm restart.

    .venv/bin/python bench/cold_start.py [--repeat 3] [--skip-compose] [--skip-worker]

worker:  a fresh `fervid worker` (shipped INT8 model, YuNet from ../shared, an EMPTY model cache, so YuNet's any-size
         rewrite runs first) on the local Redis and a scratch PostgreSQL database, its first job
         (../shared/media/single_face.jpg) queued before it starts; timed from the process's start to the job's
         finished_at. Baseline: the same worker started again on the cache the cold one left.
compose: `docker compose up -d --scale worker=2` with the images built (built first, untimed; YuNet served from
         ../shared through FERVID_DETECTOR_URL) and EMPTY volumes, then the first upload as soon as the API answers;
         timed from `up` to the job's result read through the API. Baseline: `down` (volumes kept) and `up` again.
Needs a Docker engine for the compose part (../shared/docker/prepare-engine on these machines).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_bench import REDIS_URL, run_job  # noqa: E402
from store_bench import create_database, drop_database  # noqa: E402

from bench.shared_data import SHARED, SHARED_YUNET  # noqa: E402
from fervid.migrate import upgrade  # noqa: E402
from fervid.queue import celery_app  # noqa: E402
from fervid.settings import get_settings  # noqa: E402

STILL = SHARED / "media" / "single_face.jpg"


def fresh_worker_to_first_result(env: dict[str, str], log: Path) -> float:
    """Seconds from starting `fervid worker` to its first (already queued) job's end."""
    started = time.time()
    worker = subprocess.Popen([sys.executable, "-m", "fervid.cli", "worker", "--concurrency", "1",
                               "--queues", env["FERVID_QUEUE"]], env={**os.environ, **env}, cwd=ROOT,
                              stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        run_job(STILL, 1.0, timeout=300)  # queued now, finished once the worker is up (polled every 0.2 s)
        return time.time() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def bench_worker(repeat: int) -> dict[str, Any]:
    database_url = create_database()
    try:
        upgrade(database_url)
        cold, warm = [], []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as scratch:
                env = {"FERVID_DATABASE_URL": database_url, "FERVID_BROKER_URL": REDIS_URL,
                       "FERVID_QUEUE": f"bench-{uuid.uuid4().hex[:8]}", "FERVID_DETECTOR_PATH": str(SHARED_YUNET),
                       "FERVID_MODEL_CACHE_DIR": str(Path(scratch) / "model-cache"),
                       "FERVID_FILE_URI_ROOTS": str(STILL.parent)}
                os.environ.update(env)
                get_settings.cache_clear()
                celery_app.cache_clear()
                cold.append(fresh_worker_to_first_result(env, Path(scratch) / "worker.log"))
                warm.append(fresh_worker_to_first_result(env, Path(scratch) / "worker.log"))
                print(f"fresh worker: first result {cold[-1]:.1f} s from an empty model cache, {warm[-1]:.1f} s warm",
                      flush=True)
        return {"worker_cold_s": summary(cold), "worker_warm_s": summary(warm),
                "worker_cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 2)}
    finally:
        drop_database(database_url)


class Compose:
    def __init__(self, env: dict[str, str], files: list[str]) -> None:
        self.env, self.files = env, files

    def __call__(self, *args: str) -> str:
        command = ["docker", "compose", "-p", "fervid-bench", *(f for name in self.files for f in ("-f", name)), *args]
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)}: {done.stderr[-2000:]}")
        return done.stdout


def http_json(method: str, url: str, key: str, body: bytes | None = None,
              content_type: str | None = None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {key}", **({"Content-Type": content_type} if content_type else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method), timeout=30) as answer:
            return dict(json.loads(answer.read()))
    except (OSError, urllib.error.HTTPError):
        return None  # not up yet


def up_to_first_result(compose: Compose, key: str) -> float:
    started = time.monotonic()
    compose("up", "-d", "--scale", "worker=2")
    base = f"http://{compose('port', 'api', '8000').strip()}"
    boundary = uuid.uuid4().hex
    upload = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{STILL.name}"\r\n\r\n'.encode()
              + STILL.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    while (job := http_json("POST", f"{base}/v1/jobs", key, upload,
                            f"multipart/form-data; boundary={boundary}")) is None:
        time.sleep(0.2)
    while True:
        status = http_json("GET", f"{base}/v1/jobs/{job['job_id']}", key)
        if status is not None and status["status"] in ("succeeded", "failed", "cancelled"):
            if status["status"] != "succeeded":
                raise SystemExit(f"bench job ended {status['status']}: {status.get('error')}")
            return time.monotonic() - started
        time.sleep(0.2)


def bench_compose(repeat: int) -> dict[str, Any]:
    yunet = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SHARED_YUNET.parent)))
    threading.Thread(target=yunet.serve_forever, daemon=True).start()
    key = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as scratch:
        override = Path(scratch) / "bench.override.yml"
        # the builds reach this machine's YuNet server; the API publishes a port of its own
        override.write_text("services:\n  migrate: {build: {network: host}}\n  worker: {build: {network: host}}\n"
                            "  api:\n    build: {network: host}\n    ports: !override ['127.0.0.1::8000']\n")
        compose = Compose({"FERVID_API_KEYS": f"bench:{key}",
                           "FERVID_DETECTOR_URL": f"http://127.0.0.1:{yunet.server_address[1]}/{SHARED_YUNET.name}"},
                          ["docker-compose.yml", str(override)])
        compose("build")
        cold, warm = [], []
        try:
            for _ in range(repeat):
                compose("down", "--volumes", "--timeout", "10")
                cold.append(up_to_first_result(compose, key))
                compose("down", "--timeout", "10")
                warm.append(up_to_first_result(compose, key))
                print(f"compose: first result {cold[-1]:.1f} s after `up` on empty volumes, {warm[-1]:.1f} s on kept "
                      "ones", flush=True)
        finally:
            compose("down", "--volumes", "--timeout", "10")
            yunet.shutdown()
    return {"compose_cold_s": summary(cold), "compose_warm_s": summary(warm),
            "compose_cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 2)}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-compose", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    args = parser.parse_args()
    if not STILL.is_file() or not SHARED_YUNET.is_file():
        print("bench/cold_start.py: needs ../shared (media and YuNet); skipped")
        return 0
    report: dict[str, Any] = {}
    if not args.skip_worker:
        report.update(bench_worker(args.repeat))
    if not args.skip_compose:
        report.update(bench_compose(args.repeat))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
