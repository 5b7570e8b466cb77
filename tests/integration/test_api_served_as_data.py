"""Nothing the API serves runs as a page on its origin: uploads that are pages are refused, a job's media is served
as data whatever its name, media-link tokens are parsed strictly and signed with a server secret, and they stay out
of the access log. Through a real `fervid api` (uvicorn) where the server itself matters."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.media_links import media_token
from fervid.api_keys import key_digest
from tests.integration.test_api import fervid_api_process

pytestmark = pytest.mark.integration

ALICE = {"Authorization": "Bearer alice-key"}
PAGE = b"<!doctype html><script>fetch('/v1/jobs',{headers:{Authorization:sessionStorage.key}})</script>"


@pytest.fixture
def api_env(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    env = {"FERVID_DATABASE_URL": pg_url, "FERVID_BROKER_URL": redis_url,
           "FERVID_QUEUE": f"data-test-{uuid.uuid4().hex[:8]}", "FERVID_API_KEYS": "alice:alice-key",
           "FERVID_STORAGE_URL": (tmp_path / "storage").as_uri()}
    for name, value in env.items():
        fervid_env.setenv(name, value)
    from fervid.settings import get_settings

    get_settings.cache_clear()
    return {**os.environ, **env}


@pytest.mark.parametrize(("name", "content"), [
    ("x.html", PAGE),
    ("x.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
    ("x.mp4", b"\xef\xbb\xbf  \n<html><body onload=alert(1)>"),  # a page named as a video, after a BOM
    ("x.mp4", "<html><script>alert(1)</script>".encode("utf-16")),
    ("x.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
])
def test_an_upload_that_is_a_page_or_a_document_is_refused_at_submission(
        api_env: dict[str, str], tmp_path: Path, name: str, content: bytes) -> None:
    # given
    from api.app import create_app

    client = TestClient(create_app())
    # when it is uploaded
    response = client.post("/v1/jobs", headers=ALICE, files={"file": (name, content)})
    # then it is refused with a code, and nothing is stored
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unsupported_media"
    assert not [path for path in (tmp_path / "storage").rglob("*") if path.is_file()]


def test_a_jobs_media_is_served_as_data_and_bad_tokens_are_401_and_never_logged(
        api_env: dict[str, str], tmp_path: Path) -> None:
    # given a real `fervid api`, and an upload named as a page whose bytes nobody can tell (its job will fail)
    log_path = tmp_path / "api.log"
    with fervid_api_process(api_env, log_path) as base:
        client = httpx.Client(base_url=base, timeout=30)
        upload = client.post("/v1/jobs", headers=ALICE, files={"file": ("x.html", os.urandom(4096))})
        assert upload.status_code == 202, upload.text
        job_id = upload.json()["job_id"]
        link = client.post(f"/v1/jobs/{job_id}/media-link", headers=ALICE).json()["url"]

        # when the link is opened as a browser would, and with tokens that are not ones the API makes
        media = client.get(link)
        token = link.partition("token=")[2]
        bad = [client.get(f"/v1/jobs/{job_id}/media", params={"token": forged})
               for forged in ("\u00b2.x", f"{'9' * 5000}.{'0' * 64}", f" {token}", f"{token}\n", token.upper(),
                              f"+{token}", token.replace(".", ". "))]
        # and a token minted from what the key configuration holds (the key's digest) without the server's secret
        digest_only = media_token(b"", key_digest("alice-key"), job_id, int(time.time()) + 600)
        minted = client.get(f"/v1/jobs/{job_id}/media", params={"token": digest_only})
        json_answer = client.get(f"/v1/jobs/{job_id}", headers=ALICE)
        static = client.get("/static/viewer.js")

    # then the media is bytes to download, never a page, whatever its name
    assert media.status_code == 200
    assert media.headers["content-type"] == "application/octet-stream"
    assert media.headers["x-content-type-options"] == "nosniff"
    assert media.headers["content-disposition"] == "attachment"
    assert "sandbox" in media.headers["content-security-policy"]
    assert "default-src 'none'" in media.headers["content-security-policy"]
    # and every malformed or unsigned token is a 401 with its code, not a 500
    assert [answer.status_code for answer in bad] == [401] * len(bad)
    assert all(answer.json()["error"]["code"] == "unauthorized" for answer in bad)
    assert minted.status_code == 401
    # and other answers carry the headers too: data as data, the page's files under the page's policy
    assert json_answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in json_answer.headers["content-security-policy"]
    assert json_answer.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in static.headers["content-security-policy"]
    # and the access log shows the requests, not the capability
    log = log_path.read_text()
    assert f"/v1/jobs/{job_id}/media?token=[redacted]" in log and token not in log


def test_an_upload_onto_a_full_disk_is_507_disk_full_and_the_api_keeps_serving(
        api_env: dict[str, str], full_disk: Path, fervid_env: pytest.MonkeyPatch) -> None:
    # given an API whose storage is on a full disk
    from api.app import create_app
    from fervid.settings import get_settings

    fervid_env.setenv("FERVID_STORAGE_URL", full_disk.as_uri())
    get_settings.cache_clear()
    client = TestClient(create_app())
    # when an upload larger than the room left arrives
    response = client.post("/v1/jobs", headers=ALICE, files={"file": ("clip.mp4", os.urandom(256 << 10))})
    # then it is refused with its own code, nothing half-written stays, and the API answers the next request
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "disk_full"
    assert not [path for path in full_disk.rglob("*") if path.is_file()]
    assert client.get("/v1/jobs", headers=ALICE).status_code == 200
