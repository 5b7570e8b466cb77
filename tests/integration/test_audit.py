"""The audit log on PostgreSQL: a delete is recorded with the delete, key use once per key a minute, failed
authentications once per address a minute (never one row per guess)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.test_api import ALICE, Api, running_api, submit_uri

pytestmark = pytest.mark.integration


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        for key in running.redis.scan_iter("fervid:limit:*"):  # counters decide when a minute's first use is
            running.redis.delete(key)
        yield running


def events(**where: Any) -> list[tuple[str, str | None, str | None]]:
    from fervid.db import session_scope
    from fervid.tables import AuditEvent

    with session_scope() as session:
        rows = session.scalars(select(AuditEvent).filter_by(**where).order_by(AuditEvent.at)).all()
        return [(row.action, row.job_id, row.key_id) for row in rows]


def test_deletes_and_key_use_are_in_the_audit_log(api: Api) -> None:
    # given alice's job, submitted and read a few times
    job_id = submit_uri(api).json()["job_id"]
    for _ in range(3):
        assert api.client.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 200
    # when she deletes it
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
    # then the log has her key's first use this minute (one row, a digest prefix, not the key) and the delete
    logged = events(tenant=api.alice)
    assert [action for action, _, _ in logged] == ["key.used", "job.deleted"]
    key_id = logged[0][2]
    assert key_id and len(key_id) == 16 and "alice-key" not in key_id
    assert logged[1][1] == job_id


def test_a_burst_of_wrong_keys_is_one_audit_row(api: Api) -> None:
    before = len(events(action="auth.failed"))
    for n in range(10):
        assert api.client.get("/v1/jobs", headers={"Authorization": f"Bearer guess-{n}"}).status_code == 401
    assert len(events(action="auth.failed")) == before + 1
