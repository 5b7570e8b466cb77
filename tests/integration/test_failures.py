"""One long video across worker processes, surviving lost workers, a Redis restart and dropped database connections.

Everything here is real: `fervid worker` subprocesses, a Redis server process of the test's own (so it can be
restarted), the session's PostgreSQL (its connections are terminated with pg_terminate_backend).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from bench.media_factory import write_looped_clip
from tests.integration.conftest import ServiceEnv, wait_for

pytestmark = pytest.mark.integration

ALICE = {"Authorization": "Bearer alice-key"}
FAST_RECOVERY = {"FERVID_SEGMENT_SECONDS": "4", "FERVID_STALE_AFTER_S": "3", "FERVID_REQUEUE_AFTER_S": "6",
                 "FERVID_REAPER_INTERVAL_S": "1"}


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    """48 s of a real face: single_face.mp4's 72 frames played 20 times (30 fps, a keyframe every second)."""
    return write_looped_clip(shared_dir / "media" / "single_face.mp4",
                             tmp_path_factory.mktemp("clips") / "long_face.mp4", loops=20)


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    service_env.values.update(FAST_RECOVERY)
    return TestClient(create_app())


def submit(client: TestClient, path: Path, fps: float = 5) -> str:
    with path.open("rb") as stream:
        response = client.post("/v1/jobs", headers=ALICE, files={"file": (path.name, stream)},
                               data={"sample_fps": str(fps)})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def job(client: TestClient, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}", headers=ALICE).json())


def wait_progress(client: TestClient, env: ServiceEnv, job_id: str, at_least: int) -> None:
    wait_for(lambda: (job(client, job_id)["progress"]["frames_done"] or 0) >= at_least, 120,
             describe=env.worker_logs)


def wait_succeeded(client: TestClient, env: ServiceEnv, job_id: str, timeout: float = 240) -> dict[str, Any]:
    body = wait_for(lambda: (b := job(client, job_id))["status"] in ("succeeded", "failed", "cancelled") and b,
                    timeout, describe=env.worker_logs)
    assert isinstance(body, dict) and body["status"] == "succeeded", (body, env.worker_logs())
    return body


def assert_exactly_the_planned_frames(job_id: str) -> None:
    """Every planned frame stored once, with its one face, and no frame that was not planned."""
    from fervid.db import session_scope
    from fervid.tables import Face, Frame, Segment

    with session_scope() as session:
        plans = session.scalars(select(Segment.plan).where(Segment.job_id == job_id))
        planned = sorted(row.frame_index for plan in plans for row in plan)
        stored = list(session.scalars(select(Frame.frame_index).where(Frame.job_id == job_id)
                                      .order_by(Frame.frame_index)))
        faces_per_frame = session.execute(
            select(Face.frame_index, func.count()).where(Face.job_id == job_id).group_by(Face.frame_index)
        ).all()
        tracks = set(session.scalars(select(Face.track_id).where(Face.job_id == job_id).distinct()))
    assert len(planned) == 240  # 48 s at 5 fps
    assert stored == planned
    assert all(count == 1 for _, count in faces_per_frame) and len(faces_per_frame) == len(planned)
    assert len(tracks) == 1, f"one person should keep one track across segments, got {tracks}"


def test_two_workers_share_one_job_without_duplicates(
    service_env: ServiceEnv, client: TestClient, long_clip: Path
) -> None:
    service_env.start_worker()
    service_env.start_worker()
    job_id = submit(client, long_clip)
    body = wait_succeeded(client, service_env, job_id)
    assert body["progress"] == {"frames_done": 240, "frames_total": 240}
    assert_exactly_the_planned_frames(job_id)


def test_a_worker_killed_mid_job_loses_nothing(service_env: ServiceEnv, client: TestClient, long_clip: Path) -> None:
    # given a worker half-way through a job
    doomed = service_env.start_worker()
    job_id = submit(client, long_clip)
    wait_progress(client, service_env, job_id, at_least=30)
    # when it is SIGKILLed (no chance to clean up) and another worker starts
    service_env.kill_worker(doomed, signal.SIGKILL)
    assert job(client, job_id)["status"] == "running"
    service_env.start_worker()
    # then the reaper hands the dead worker's segment to the new one and the job completes exactly
    wait_succeeded(client, service_env, job_id)
    assert_exactly_the_planned_frames(job_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A real redis-server process of the test's own, without persistence, so a restart loses its queues."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._ping(), 10)

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


def test_a_redis_restart_mid_job_loses_nothing(
    service_env: ServiceEnv, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, long_clip: Path
) -> None:
    from api.app import create_app
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    # given a worker and an API on a Redis server that keeps nothing on disk
    service_env.values.update({**FAST_RECOVERY, "FERVID_BROKER_URL": own_redis.url})
    monkeypatch.setenv("FERVID_BROKER_URL", own_redis.url)
    get_settings.cache_clear()
    celery_app.cache_clear()
    client = TestClient(create_app())
    service_env.start_worker()
    job_id = submit(client, long_clip)
    wait_progress(client, service_env, job_id, at_least=30)
    # when Redis dies, losing every queued message, and comes back empty
    own_redis.kill()
    time.sleep(2)
    own_redis.start()
    # then the worker reconnects, the reaper re-sends the lost segments, and the job completes exactly
    wait_succeeded(client, service_env, job_id)
    assert_exactly_the_planned_frames(job_id)


def test_dropped_database_connections_mid_job_are_retried(
    service_env: ServiceEnv, client: TestClient, long_clip: Path, pg_url: str
) -> None:
    from fervid.db import make_engine

    # given a worker half-way through a job
    service_env.start_worker()
    job_id = submit(client, long_clip)
    wait_progress(client, service_env, job_id, at_least=30)
    # when the database terminates every other connection, three times over
    admin = make_engine(pg_url)
    with admin.connect() as connection:
        for _ in range(3):
            terminated = connection.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
            assert terminated >= 1
            time.sleep(1.0)
    admin.dispose()
    # then the worker's transient errors are retried and the job completes exactly
    wait_succeeded(client, service_env, job_id)
    assert_exactly_the_planned_frames(job_id)

