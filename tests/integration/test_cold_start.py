"""A fresh `fervid worker`, as users start one: the shipped INT8 model, an empty model cache, --queues as compose
gives it, at least 2 usable cores. Its main process forks the pool, so it must hold no thread but its own when it
does; a pool process forked beside OpenCV's thread pool hung for ever before its first job (only ever on a cold
cache, where an INT8 self-check, since replaced by a check of the file at load, then ran in the main process)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fervid.webhooks import tenant_signing_key, verify
from tests.conftest import FileServer
from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_end_to_end import WebhookReceiver, forget_earlier_workers, submit_file, wait_finished

pytestmark = pytest.mark.integration


@pytest.fixture
def cold_env(service_env: ServiceEnv, monkeypatch: pytest.MonkeyPatch) -> ServiceEnv:
    """service_env with the shipped (INT8) model instead of the tiny float one, on at least 2 usable cores."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 usable cores: with one, the worker starts no classifier threads to inherit")
    del service_env.values["FERVID_MODEL_PATH"]
    monkeypatch.delenv("FERVID_MODEL_PATH")
    assert not (Path(service_env.values["FERVID_MODEL_CACHE_DIR"])).exists()
    return service_env


@pytest.fixture
def client(cold_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def worker_health(env: ServiceEnv) -> subprocess.CompletedProcess[str]:
    """`fervid worker-health`, the worker image's health check, for this host."""
    return subprocess.run([sys.executable, "-m", "fervid.cli", "worker-health"], capture_output=True, text=True,
                          env={**os.environ, **env.values}, timeout=60)


def threads_of(pid: int) -> list[str]:
    """The names of a live process's native threads (Python's and every library's)."""
    return [(task / "comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()]


def test_a_fresh_worker_downloads_yunet_and_finishes_its_first_int8_job_with_a_signed_webhook(
    cold_env: ServiceEnv, client: TestClient, shared_dir: Path, yunet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an empty model cache, YuNet only on a mirror, a webhook secret, and a worker started as compose starts it
    mirror = FileServer(yunet_path)
    del cold_env.values["FERVID_DETECTOR_PATH"]
    monkeypatch.delenv("FERVID_DETECTOR_PATH")
    secret = secrets.token_hex(24)
    receiver = WebhookReceiver()
    try:
        extra = {"FERVID_DETECTOR_URL": mirror.url, "FERVID_WEBHOOK_SECRETS": f"v1:{secret}"}
        worker = cold_env.start_worker(queues=cold_env.values["FERVID_QUEUE"], extra=extra)

        # when its first job is submitted
        job_id = submit_file(client, shared_dir / "media" / "single_face.jpg", webhook_url=receiver.url)
        job = wait_finished(client, cold_env, job_id, timeout=240)

        # then it ran on YuNet and the shipped INT8 model, and its webhook came, signed for the tenant
        assert job["status"] == "succeeded", job
        assert job["model"]["detector"] == "yunet" and job["model"]["precision"] == "int8", job
        wait_for(lambda: receiver.signed, 60, describe=cold_env.worker_logs)
        (signature, body), = receiver.signed
        assert verify({"v1": tenant_signing_key(secret, "alice")}, signature, body, time.time())
        assert receiver.received[0]["job_id"] == job_id
        # and the main process, which forks the pool, holds no thread of any library
        assert threads_of(worker.pid) == [threads_of(worker.pid)[0]], cold_env.worker_logs()
    finally:
        receiver.server.shutdown()
        mirror.server.shutdown()


def test_a_fresh_worker_without_a_detector_falls_back_to_haar_and_finishes_its_first_job(
    cold_env: ServiceEnv, client: TestClient, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an empty model cache, no YuNet anywhere and no download (air-gapped), and no worker yet
    del cold_env.values["FERVID_DETECTOR_PATH"]
    monkeypatch.delenv("FERVID_DETECTOR_PATH")
    forget_earlier_workers()
    assert worker_health(cold_env).returncode == 1
    worker = cold_env.start_worker(concurrency=2, queues=cold_env.values["FERVID_QUEUE"])

    # when its first jobs are submitted, one for each pool process
    jobs = [submit_file(client, shared_dir / "media" / name) for name in ("astronaut.png", "single_face.jpg")]

    # then both finish on the Haar cascade with the shipped model
    for job_id in jobs:
        job = wait_finished(client, cold_env, job_id, timeout=240)
        assert job["status"] == "succeeded" and job["model"]["detector"] == "haar", job
    assert len(threads_of(worker.pid)) == 1, cold_env.worker_logs()
    # and the container health check passes, naming both pool processes
    healthy = worker_health(cold_env)
    assert healthy.returncode == 0 and "2 worker process(es)" in healthy.stdout, healthy.stderr
