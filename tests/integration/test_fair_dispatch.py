"""Fair dispatch on the real Redis and databases: each tenant's window of sent tasks, the order its waiting tasks
go in, racing dispatchers, a broker outage; and, with real worker processes, a later tenant's job finishing before
an earlier tenant's backlog."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fervid import lifecycle
from fervid.db import session_scope
from fervid.dispatch import dispatch
from fervid.queue import PREPARE_TASK, SEGMENT_TASK
from tests.integration.conftest import ServiceEnv, sent, wait_for
from tests.integration.test_api import closed_port
from tests.integration.test_record_store import MEDIA, MODEL, load_job, make_job, make_plans
from worker import record_store

pytestmark = pytest.mark.integration


def backlog(tenant: str, jobs: int) -> list[str]:
    """`jobs` queued jobs of the tenant, none sent yet, created a second apart in this order."""
    start = datetime.now(UTC) - timedelta(hours=1)
    return [make_job(tenant=tenant, created_at=start + timedelta(seconds=n)) for n in range(jobs)]


def dispatch_now(tenant: str, queue: str, tasks_per_tenant: int) -> int:
    with session_scope() as session:
        return dispatch(session, tenant, queue, tasks_per_tenant)


def test_a_tenant_has_at_most_its_window_sent_and_its_oldest_job_goes_first(queue: str, redis_url: str) -> None:
    # given alice's backlog of four jobs and bob's one, none sent, and a window of two tasks per tenant
    alice = backlog("alice", 4)
    (bob,) = backlog("bob", 1)
    # when both are dispatched
    sent_now = dispatch_now("alice", queue, 2), dispatch_now("bob", queue, 2)
    # then alice's two oldest prepares and bob's went out; alice's other two wait
    assert sent_now == (2, 1)
    assert sent(redis_url, queue) == [(PREPARE_TASK, [alice[0]]), (PREPARE_TASK, [alice[1]]), (PREPARE_TASK, [bob])]
    assert [load_job(job_id).enqueued_at is None for job_id in alice] == [False, False, True, True]
    # and when alice's first job is prepared into two segments, its room goes to them before her later jobs
    assert lifecycle.claim_prepare(alice[0], "delivery", retrying=False, max_attempts=3, stale_after_s=60)
    assert record_store.start_job(alice[0], "delivery", MEDIA, make_plans(2, 3), MODEL) == [0, 1]
    assert dispatch_now("alice", queue, 2) == 1
    assert sent(redis_url, queue)[3:] == [(SEGMENT_TASK, [alice[0], 0])]
    # and a full window sends nothing more
    assert dispatch_now("alice", queue, 2) == 0


def test_racing_dispatchers_never_overfill_a_window(queue: str, redis_url: str, database: str) -> None:
    # given a backlog of twelve jobs and a window of three
    if database.startswith("sqlite"):
        pytest.skip("SQLite serialises writers; the concurrent case is PostgreSQL's")
    backlog("alice", 12)
    barrier = threading.Barrier(8)
    counts: list[int] = []

    def race() -> None:
        barrier.wait(timeout=30)
        counts.append(dispatch_now("alice", queue, 3))

    # when eight dispatchers run at the same moment
    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then three tasks were sent in all, once each
    assert len(counts) == 8 and sum(counts) == 3
    assert len({tuple(args) for _, args in sent(redis_url, queue)}) == len(sent(redis_url, queue)) == 3


def test_tasks_that_could_not_be_sent_wait_for_the_next_dispatch(queue: str, redis_url: str,
                                                                 fervid_env: pytest.MonkeyPatch) -> None:
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    # given two waiting jobs, and a broker nothing listens on
    jobs = backlog("alice", 2)
    fervid_env.setenv("FERVID_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    get_settings.cache_clear()
    celery_app.cache_clear()
    # when they are dispatched
    assert dispatch_now("alice", queue, 2) == 0
    # then both still wait, and once the broker is back the next dispatch sends them
    assert [load_job(job_id).enqueued_at for job_id in jobs] == [None, None]
    fervid_env.setenv("FERVID_BROKER_URL", redis_url)
    get_settings.cache_clear()
    celery_app.cache_clear()
    assert dispatch_now("alice", queue, 2) == 2
    assert sent(redis_url, queue) == [(PREPARE_TASK, [job_id]) for job_id in jobs]


# --- with real workers ------------------------------------------------------------------------------------------

ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}


def submit_image(client: TestClient, headers: dict[str, str], image: Path) -> str:
    response = client.post("/v1/jobs", headers=headers, files={"file": (image.name, image.read_bytes())})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_a_later_tenants_job_finishes_before_an_earlier_tenants_backlog(
        service_env: ServiceEnv, monkeypatch: pytest.MonkeyPatch, shared_dir: Path) -> None:
    from api.app import create_app
    from fervid.settings import get_settings

    # given a window of two tasks per tenant, alice's backlog of eight one-image jobs, then bob's one
    service_env.values["FERVID_TASKS_PER_TENANT"] = "2"
    monkeypatch.setenv("FERVID_TASKS_PER_TENANT", "2")
    get_settings.cache_clear()
    client = TestClient(create_app())
    image = shared_dir / "media" / "single_face.jpg"
    alice = [submit_image(client, ALICE, image) for _ in range(8)]
    bob = submit_image(client, BOB, image)
    # when one worker process works through them, one task at a time
    service_env.start_worker(concurrency=1)

    def jobs() -> list[dict[str, Any]]:
        return [client.get(f"/v1/jobs/{job_id}", headers=headers).json()
                for job_id, headers in [*((job_id, ALICE) for job_id in alice), (bob, BOB)]]

    wait_for(lambda: all(job["status"] in ("succeeded", "failed") for job in jobs()), 300,
             describe=service_env.worker_logs)
    # then every job succeeded, and bob's finished before half of alice's (first in, first out: after all of them)
    finished = jobs()
    assert [job["status"] for job in finished] == ["succeeded"] * 9
    order = [job["job_id"] for job in sorted(finished, key=lambda job: datetime.fromisoformat(job["finished_at"]))]
    assert order.index(bob) < len(alice) // 2, order
