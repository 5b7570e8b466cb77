"""Bounded work: a file that kills every worker it reaches fails the job after FERVID_MAX_ATTEMPTS deliveries.

Real `fervid worker` processes on the real Redis and PostgreSQL. The crash is the documented test seam
tests/process_hooks (the worker process calls os._exit where a decoder crash would kill it), loaded only by tests.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from tests.integration.conftest import ServiceEnv, wait_for

pytestmark = pytest.mark.integration

ALICE = {"Authorization": "Bearer alice-key"}
CRASH_FILE = "crash-every-time.mp4"
MAX_ATTEMPTS = 3
FAST_RECOVERY = {"FERVID_STALE_AFTER_S": "2", "FERVID_REQUEUE_AFTER_S": "4", "FERVID_REAPER_INTERVAL_S": "1",
                 "FERVID_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    service_env.values.update(FAST_RECOVERY)
    return TestClient(create_app())


def submit(client: TestClient, path: Path, filename: str) -> str:
    with path.open("rb") as stream:
        response = client.post("/v1/jobs", headers=ALICE, files={"file": (filename, stream)},
                               data={"sample_fps": "5"})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_ended(client: TestClient, env: ServiceEnv, job_id: str, timeout: float) -> dict[str, Any]:
    body = wait_for(lambda: (b := client.get(f"/v1/jobs/{job_id}", headers=ALICE).json())["status"]
                    in ("succeeded", "failed", "cancelled") and b, timeout, describe=env.worker_logs)
    assert isinstance(body, dict)
    return body


def crashes(env: ServiceEnv) -> int:
    return sum(path.read_text(errors="replace").count("FERVID_TEST_CRASH_ON=") for path in env.logs)


@pytest.mark.parametrize("stage", ["prepare", pytest.param("segment", marks=pytest.mark.xfail(
    strict=False, reason="intermittent: the segment is sometimes left pending and its re-sends never reach the "
    "worker, as in the test_reaper failures on main (messages the reaper sends do not land in the queue's list)"))])
def test_a_file_that_kills_every_worker_fails_after_max_attempts(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path, redis_url: str, stage: str) -> None:
    # given a worker that dies (os._exit) at `stage` of this one file, every time
    service_env.start_worker(concurrency=1, crash_on=f"{stage}:{CRASH_FILE}")
    # when the file is submitted
    job_id = submit(client, shared_dir / "media" / "single_face.mp4", CRASH_FILE)
    # then the job fails processing_failed within a bounded time, after exactly FERVID_MAX_ATTEMPTS crashes
    body = wait_ended(client, service_env, job_id, timeout=60)
    assert body["status"] == "failed", (body, service_env.worker_logs())
    assert body["error"]["code"] == "processing_failed"
    assert f"{MAX_ATTEMPTS} attempts" in body["error"]["message"]
    assert crashes(service_env) == MAX_ATTEMPTS
    # and nothing is redelivered afterwards: no further crash, nothing left in the queue
    time.sleep(4)
    assert crashes(service_env) == MAX_ATTEMPTS, service_env.worker_logs()
    assert redis.Redis.from_url(redis_url).llen(service_env.values["FERVID_QUEUE"]) == 0
    # and the worker still serves other jobs
    other = submit(client, shared_dir / "media" / "single_face.mp4", "single_face.mp4")
    assert wait_ended(client, service_env, other, timeout=60)["status"] == "succeeded", service_env.worker_logs()


class DrippingReceiver:
    """A loopback webhook receiver that reads the POST, then answers one byte every 2 s; it records when each
    connection opened and when the sender gave up on it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.connections: list[tuple[float, float | None]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        slot = len(self.connections)
        self.connections.append((time.monotonic(), None))
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 10:
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break
                try:
                    if connection.recv(65536, socket.MSG_DONTWAIT) == b"":  # the sender closed
                        break
                except BlockingIOError:  # still open, nothing more sent
                    pass
                except OSError:
                    break
                time.sleep(2)
        self.connections[slot] = (self.connections[slot][0], time.monotonic())

    def close(self) -> None:
        self.server.close()


def test_a_dripping_webhook_receiver_holds_neither_the_api_nor_a_worker(
        service_env: ServiceEnv, client: TestClient) -> None:
    # given a worker whose webhook attempts have a 3 s deadline, and alice's jobs with a webhook to a receiver that
    # drips its answer one byte every 2 s
    deadline_s = 3.0
    service_env.start_worker(extra={"FERVID_WEBHOOK_DEADLINE_S": str(deadline_s)})
    receiver = DrippingReceiver()
    try:
        job_ids = []
        for _ in range(5):
            response = client.post("/v1/jobs", headers=ALICE, json={
                "source_uri": "http://127.0.0.1:9/clip.mp4", "webhook_url": receiver.url})
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
        # when alice cancels them, each cancel queues its webhook and answers at once
        for job_id in job_ids:
            started = time.monotonic()
            client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
            assert time.monotonic() - started < 2.0
        # then another tenant is answered while the receiver drips
        wait_for(lambda: receiver.connections, 30, describe=service_env.worker_logs)
        started = time.monotonic()
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer bob-key"}).status_code == 200
        assert time.monotonic() - started < 2.0
        # and the worker gives up on each attempt at its deadline, not when the receiver stops
        wait_for(lambda: any(end is not None for _, end in receiver.connections), 20, describe=service_env.worker_logs)
        durations = [end - start for start, end in receiver.connections if end is not None]
        assert durations and all(duration < deadline_s + 2.5 for duration in durations), durations
    finally:
        receiver.close()
