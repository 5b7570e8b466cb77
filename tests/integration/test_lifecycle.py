"""A job's life through real processes (fervid.lifecycle): webhooks that survive a crash and a flushed broker,
cancel that frees the worker, duplicate deliveries that spend nothing, and a worker whose clock is behind.

Real `fervid worker` processes on the real Redis and PostgreSQL; crashes are injected by tests/process_hooks.
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_end_to_end import ALICE, WebhookReceiver, submit_file, wait_finished

pytestmark = pytest.mark.integration

BOB = {"Authorization": "Bearer bob-key"}
# Lost work is noticed in seconds, not minutes: a heartbeat 2 s old is stale, a message unanswered for 3 s lost.
FAST_RECOVERY = {"FERVID_STALE_AFTER_S": "2", "FERVID_REQUEUE_AFTER_S": "3", "FERVID_REAPER_INTERVAL_S": "1"}


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    service_env.values.update(FAST_RECOVERY)
    return TestClient(create_app())


def crashes(env: ServiceEnv) -> int:
    return sum(path.read_text(errors="replace").count("FERVID_TEST_CRASH_ON=") for path in env.logs)


def events_by_job(receiver: WebhookReceiver) -> dict[str, Counter[str]]:
    by_job: dict[str, Counter[str]] = {}
    for body in list(receiver.received):
        by_job.setdefault(body["job_id"], Counter())[body["event_id"]] += 1
    return by_job


def test_a_worker_killed_between_a_jobs_end_and_its_webhook_sends_it_exactly_once(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path) -> None:
    # given a worker that dies right after each job's end commits, before its webhook is sent
    receiver = WebhookReceiver()
    try:
        service_env.start_worker(concurrency=1, crash_on="webhook:*", crash_once=True)
        # when three jobs with a webhook run to their end
        jobs = [submit_file(client, shared_dir / "media" / "single_face.jpg", webhook_url=receiver.url)
                for _ in range(3)]
        for job_id in jobs:
            assert wait_finished(client, service_env, job_id, timeout=120)["status"] == "succeeded"
        wait_for(lambda: set(events_by_job(receiver)) >= set(jobs), 60, describe=service_env.worker_logs)
        time.sleep(5)  # past another lease: nothing more may come
        # then each job's process died once there, and each job's receiver got exactly one POST, of one event
        assert crashes(service_env) == 3, service_env.worker_logs()
        by_job = events_by_job(receiver)
        assert {job_id: sorted(by_job[job_id].values()) for job_id in jobs} == {job_id: [1] for job_id in jobs}
        assert all(body["status"] == "succeeded" for body in receiver.received)
    finally:
        receiver.server.shutdown()


def test_a_webhook_owed_when_the_broker_loses_its_data_still_arrives(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    # given a broker of this test's own (a Redis database nobody else uses), and a job cancelled with a webhook
    # while no worker runs
    broker = f"{redis_url.rsplit('/', 1)[0]}/7"
    redis.Redis.from_url(broker).flushdb()
    service_env.values["FERVID_BROKER_URL"] = broker
    monkeypatch.setenv("FERVID_BROKER_URL", broker)
    get_settings.cache_clear()
    celery_app.cache_clear()
    receiver = WebhookReceiver()
    try:
        job_id = submit_file(client, shared_dir / "media" / "single_face.jpg", webhook_url=receiver.url)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).json()["status"] == "cancelled"
        assert redis.Redis.from_url(broker).dbsize() > 0  # the webhook's message was sent ...
        # when Redis loses everything, that message with it, and then a worker starts
        redis.Redis.from_url(broker).flushdb()
        service_env.start_worker(concurrency=1)
        # then the webhook arrives anyway, once, from the outbox
        wait_for(lambda: job_id in events_by_job(receiver), 60, describe=service_env.worker_logs)
        time.sleep(4)
        assert sorted(events_by_job(receiver)[job_id].values()) == [1]
    finally:
        receiver.server.shutdown()
        redis.Redis.from_url(broker).flushdb()


class DrippingSource:
    """An HTTP source that promises a large file and sends it slowly, above the minimum rate: a download that would
    take an hour."""

    def __init__(self) -> None:
        self.open_connections = 0
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                source.open_connections += 1
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Content-Length", str(200 << 20))
                    self.end_headers()
                    for _ in range(36_000):
                        self.wfile.write(b"\0" * 8192)
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    pass  # the worker cut the download
                finally:
                    source.open_connections -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/clip.mp4"


def test_submitting_and_cancelling_slow_jobs_does_not_hold_the_worker_from_another_tenant(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path) -> None:
    # given one worker, and alice's 45 jobs whose source drips at 80 KiB/s, each cancelled right after submission
    source = DrippingSource()
    try:
        service_env.start_worker(concurrency=1, extra={"FERVID_DOWNLOAD_MIN_RATE_KBPS": "16"})
        for _ in range(45):
            response = client.post("/v1/jobs", headers=ALICE, json={"source_uri": source.url, "sample_fps": 1})
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).status_code == 200
        # when bob submits a small job
        with (shared_dir / "media" / "single_face.jpg").open("rb") as stream:
            response = client.post("/v1/jobs", headers=BOB, files={"file": ("single_face.jpg", stream)})
        assert response.status_code == 202, response.text
        bob = response.json()["job_id"]
        submitted = time.monotonic()
        # then it starts within 10 s, and alice's downloads have all stopped
        wait_for(lambda: client.get(f"/v1/jobs/{bob}", headers=BOB).json()["status"] != "queued", 10,
                 interval=0.1, describe=service_env.worker_logs)
        started_s = time.monotonic() - submitted
        body = wait_for(lambda: (b := client.get(f"/v1/jobs/{bob}", headers=BOB).json())["status"]
                        in ("succeeded", "failed") and b, 60, describe=service_env.worker_logs)
        assert body["status"] == "succeeded", body  # type: ignore[index]
        wait_for(lambda: source.open_connections == 0, 10)
        assert started_s < 10
    finally:
        source.server.shutdown()


def test_one_segment_delivered_three_times_at_once_runs_once_and_spends_one_attempt(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path) -> None:
    # given a job prepared here, each of whose segments is sent three times before any worker runs
    from fervid.db import session_scope
    from fervid.lifecycle import SegmentStatus
    from fervid.queue import send_segment
    from fervid.settings import get_settings
    from fervid.tables import Frame, Job, Segment
    from worker import runner
    from worker.records import ModelInfo

    job_id = submit_file(client, shared_dir / "media" / "single_face.mp4", sample_fps=5)
    settings = get_settings().model_copy(update={"segment_seconds": 2.0})
    segments = runner.prepare(job_id, "test-prepare", ModelInfo("tiny", "0", "ort-cpu", "fp32", "yunet"), settings)
    assert len(segments) >= 2
    for index in segments:
        for _ in range(3):
            send_segment(job_id, index, service_env.values["FERVID_QUEUE"])
    # when a worker with three processes takes them
    service_env.start_worker(concurrency=3)
    # then the job succeeds with every sampled frame once, and each segment was claimed once
    assert wait_finished(client, service_env, job_id, timeout=180)["status"] == "succeeded"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        frames = session.scalar(select(func.count()).select_from(Frame).where(Frame.job_id == job_id))
        states = session.execute(select(Segment.status, Segment.attempts).where(Segment.job_id == job_id)).all()
    assert frames == job.frames_total
    assert [tuple(state) for state in states] == [(SegmentStatus.done, 1)] * len(segments)


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs libfaketime (apt-get install faketime)")
def test_a_worker_whose_clock_is_two_minutes_behind_finishes_its_jobs(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path) -> None:
    # given a worker whose clock is two minutes behind the database's, and another worker (on a queue of its own)
    # whose clock is right; both reap, judging work stale after 2 s
    service_env.start_worker(concurrency=1, prefix=("faketime", "-f", "-120s"))
    service_env.start_worker(concurrency=1, queues=f"{service_env.values['FERVID_QUEUE']}-elsewhere")
    # when it runs jobs of several segments
    jobs = [submit_file(client, shared_dir / "media" / "single_face.mp4", sample_fps=5) for _ in range(2)]
    # then they succeed, none of their work taken for dead
    for job_id in jobs:
        body = wait_finished(client, service_env, job_id, timeout=180)
        assert body["status"] == "succeeded", (body, service_env.worker_logs())
    from fervid.db import session_scope
    from fervid.tables import Segment

    with session_scope() as session:
        attempts = session.scalars(select(Segment.attempts).where(Segment.job_id.in_(jobs))).all()
    assert set(attempts) == {1}


class FramesAtAWalk:
    """An analyzer that takes 0.3 s a frame and never asks whether to stop: only the runner killing its decoder ends
    its loop early."""

    def analyze(self, frames: Any, on_progress: Any, warnings: list[str]) -> list[Any]:
        for _ in frames:
            time.sleep(0.3)
        return []


def test_a_cancelled_segment_stops_decoding_within_a_second_and_lets_go(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path) -> None:
    # given a job prepared here with one long segment, running in a thread on an analyzer that never checks
    from fervid.db import session_scope
    from fervid.lifecycle import SegmentStatus
    from fervid.settings import get_settings
    from fervid.tables import Segment
    from worker import runner
    from worker.records import ModelInfo

    job_id = submit_file(client, shared_dir / "media" / "single_face.mp4", sample_fps=10)
    settings = get_settings().model_copy(update={"segment_seconds": 600.0})
    assert runner.prepare(job_id, "prepare", ModelInfo("tiny", "0", "ort-cpu", "fp32", "yunet"), settings) == [0]
    ended = threading.Event()
    def run() -> None:
        runner.run_segment(job_id, 0, "delivery", FramesAtAWalk(), settings)  # type: ignore[arg-type]
        ended.set()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(2.0)
    assert not ended.is_set()
    # when the job is cancelled
    cancelled_at = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).json()["status"] == "cancelled"
    # then the segment stops within about a heartbeat and lets its claim go
    assert ended.wait(5.0)
    stopped_s = time.monotonic() - cancelled_at
    thread.join()
    with session_scope() as session:
        segment = session.get(Segment, (job_id, 0))
        assert segment is not None and segment.status == SegmentStatus.cancelled and segment.claim_token is None
    assert stopped_s < 1.0 + runner.HEARTBEAT_INTERVAL_S, stopped_s
