"""Retention with a real worker process: a deleted job's copy in the worker's download cache goes, and finished
jobs past FERVID_RETENTION_DAYS are deleted by the reaper (rows, stored media, an audit row)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_api import fervid_api_process
from tests.integration.test_end_to_end import ALICE, submit_file, wait_finished

pytestmark = pytest.mark.integration

RETENTION_DAYS = 8 / 86400  # 8 s: long enough to DELETE the first job by hand, short enough to watch expiry


@pytest.fixture
def media_server(shared_dir: Path) -> Iterator[str]:
    """The shared media over http on loopback, as a tenant's source would be."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared_dir / "media"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def cached(env: ServiceEnv, job_id: str) -> list[Path]:
    directory = Path(env.values["FERVID_DOWNLOAD_CACHE_DIR"])
    return sorted(directory.glob(f"{job_id}.*")) if directory.is_dir() else []


def test_delete_clears_the_download_cache_and_finished_jobs_expire(
        service_env: ServiceEnv, media_server: str, shared_dir: Path) -> None:
    from api.app import create_app
    from fervid.db import session_scope
    from fervid.tables import AuditEvent

    client = TestClient(create_app())
    service_env.start_worker(extra={"FERVID_RETENTION_DAYS": str(RETENTION_DAYS)})
    # given a job the worker downloaded from an http source, kept in its download cache
    response = client.post("/v1/jobs", headers=ALICE, json={"source_uri": f"{media_server}/astronaut.png"})
    assert response.status_code == 202, response.text
    downloaded = response.json()["job_id"]
    assert wait_finished(client, service_env, downloaded)["status"] == "succeeded"
    assert cached(service_env, downloaded)
    # when it is deleted; then the worker's cached copy goes within a reaper pass or two
    assert client.delete(f"/v1/jobs/{downloaded}", headers=ALICE).status_code == 204
    wait_for(lambda: not cached(service_env, downloaded), timeout=15, describe=service_env.worker_logs)

    # given an uploaded job that finished
    uploaded = submit_file(client, shared_dir / "media" / "astronaut.png")
    assert wait_finished(client, service_env, uploaded)["status"] == "succeeded"
    storage = Path(service_env.values["FERVID_STORAGE_URL"].removeprefix("file://"))
    assert list((storage / uploaded).iterdir())
    # when FERVID_RETENTION_DAYS passes; then the reaper deletes its rows and its media, and says so in the audit log
    wait_for(lambda: client.get(f"/v1/jobs/{uploaded}", headers=ALICE).status_code == 404, timeout=30,
             describe=service_env.worker_logs)
    assert not (storage / uploaded).exists()
    with session_scope() as session:
        actions = set(session.scalars(select(AuditEvent.action).where(AuditEvent.job_id.in_([downloaded, uploaded]))))
    assert actions == {"job.deleted", "job.expired"}


def test_the_api_sweeps_its_own_download_cache(service_env: ServiceEnv, tmp_path: Path) -> None:
    # given a real `fervid api` whose download cache holds a copy for a job that exists and one for a job long gone
    # (the media route fetches remote media there to serve it)
    cache = tmp_path / "api-download-cache"
    env = {**os.environ, **service_env.values, "FERVID_DOWNLOAD_CACHE_DIR": str(cache),
           "FERVID_REAPER_INTERVAL_S": "0.5"}
    with fervid_api_process(env, tmp_path / "api.log") as base:
        upload = httpx.post(f"{base}/v1/jobs", headers=ALICE, files={"file": ("a.mp4", os.urandom(4096))}, timeout=30)
        assert upload.status_code == 202, upload.text
        cache.mkdir(exist_ok=True)
        kept, gone = cache / f"{upload.json()['job_id']}.0123abcd.mp4", cache / f"{uuid.uuid4()}.4567ef01.mp4"
        for path in (kept, gone, gone.with_name(gone.name + ".lock")):
            path.write_bytes(b"cached")
        # when the API runs for a while
        wait_for(lambda: not gone.exists(), 20, describe=lambda: (tmp_path / "api.log").read_text()[-2000:])
    # then the copy of the job that is gone went, with its lock, and the other stays
    assert kept.exists() and not gone.with_name(gone.name + ".lock").exists()
