"""Bounded work: a file that kills every worker it reaches fails the job after FERVID_MAX_ATTEMPTS deliveries.

Real `fervid worker` processes on the real Redis and PostgreSQL. The crash is the documented test seam
FERVID_TEST_CRASH_ON (the worker process calls os._exit where a decoder crash would kill it); production never
sets it.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("stage", ["prepare", "segment"])
def test_a_file_that_kills_every_worker_fails_after_max_attempts(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path, redis_url: str, stage: str) -> None:
    # given a worker that dies (os._exit) at `stage` of this one file, every time
    service_env.start_worker(concurrency=1, extra={"FERVID_TEST_CRASH_ON": f"{stage}:{CRASH_FILE}"})
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
