"""The same API on the embedded SQLite database (naive datetimes, row-value keyset comparisons, cascades)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_api import ALICE, Api, insert_results, running_api, submit_uri, upload

pytestmark = pytest.mark.integration


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, sqlite_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(sqlite_url, redis_url, fervid_env) as running:
        yield running


def test_jobs_page_newest_first_on_sqlite(api: Api) -> None:
    # given seven jobs
    ids = [submit_uri(api).json()["job_id"] for _ in range(7)]
    # when they are listed three at a time
    seen, cursor = [], None
    while True:
        page = api.client.get("/v1/jobs", headers=ALICE, params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        seen += [item["job_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    # then each appears once, newest first, with UTC times
    assert seen == ids[::-1]
    assert page.json()["items"][-1]["created_at"].endswith("Z")


def test_results_cancel_and_delete_on_sqlite(api: Api) -> None:
    # given an uploaded job with results
    job_id = upload(api, b"video bytes").json()["job_id"]
    expected = insert_results(job_id, frames=40, tracks_at=lambda k: [1] if k % 4 else [])
    # when its results are read, then it is cancelled and deleted
    timeline = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"limit": 1000}).json()
    summary = api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE, params={"faces": "all"}).json()
    csv_lines = api.client.get(f"/v1/jobs/{job_id}/timeline.csv", headers=ALICE).text.splitlines()
    cancelled = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).json()
    deleted = api.client.delete(f"/v1/jobs/{job_id}", headers=ALICE)
    # then everything answers as on PostgreSQL, and the delete cascades to the results and the file
    assert timeline["items"] == expected and timeline["next_cursor"] is None
    assert summary["tracks"][0]["frames"] == 30 and len(csv_lines) == 1 + 40
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"].endswith("Z")
    assert deleted.status_code == 204 and api.stored_files() == []
    from sqlalchemy import func, select

    from fervid.db import session_scope
    from fervid.tables import Face, Frame

    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Frame).where(Frame.job_id == job_id)) == 0
        assert session.scalar(select(func.count()).select_from(Face).where(Face.job_id == job_id)) == 0
