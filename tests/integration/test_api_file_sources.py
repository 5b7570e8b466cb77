"""file:// and s3:// sources read what the workers can read: accepted only under the locations the operator opened,
and never from the upload store, which holds every tenant's uploads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_api import ALICE, running_api

pytestmark = pytest.mark.integration


def test_file_uris_are_refused_unless_under_an_allowed_root(
    fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given an operator that opened one folder for file:// sources
    allowed = tmp_path / "shared-mount"
    allowed.mkdir()
    (allowed / "clip.mp4").write_bytes(b"x")
    fervid_env.setenv("FERVID_FILE_URI_ROOTS", str(allowed))
    with running_api(pg_url, redis_url, fervid_env) as api:
        # when sources inside, outside and escaping the folder are submitted
        inside = api.client.post("/v1/jobs", headers=ALICE, json={"source_uri": (allowed / "clip.mp4").as_uri()})
        outside = api.client.post("/v1/jobs", headers=ALICE, json={"source_uri": "file:///etc/passwd"})
        escaping = api.client.post("/v1/jobs", headers=ALICE,
                                   json={"source_uri": f"file://{allowed}/../../../etc/passwd"})
    # then only the one inside is queued
    assert inside.status_code == 202, inside.text
    for refused in (outside, escaping):
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "source_not_allowed"


def test_s3_uris_are_refused_unless_under_an_allowed_prefix_and_never_in_the_upload_store(
    fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str
) -> None:
    # given an operator that opened one bucket prefix for s3:// sources, and keeps uploads in the same bucket
    fervid_env.setenv("FERVID_S3_SOURCE_PREFIXES", "s3://media/incoming")
    fervid_env.setenv("FERVID_STORAGE_URL", "s3://media/incoming/uploads")
    with running_api(pg_url, redis_url, fervid_env) as api:
        # when sources inside, beside, in another bucket and in the upload store are submitted
        def submit(uri: str) -> int:
            response = api.client.post("/v1/jobs", headers=ALICE, json={"source_uri": uri})
            assert response.status_code in (202, 422), response.text
            assert response.status_code == 202 or response.json()["error"]["code"] == "source_not_allowed"
            return response.status_code

        statuses = {uri: submit(uri) for uri in [
            "s3://media/incoming/clip.mp4", "s3://media/incoming-other/clip.mp4", "s3://media/private/clip.mp4",
            "s3://other-bucket/incoming/clip.mp4", "s3://media/incoming/uploads/some-job/media.mp4"]}
    # then only the one inside the opened prefix, outside the upload store, is queued
    assert statuses == {"s3://media/incoming/clip.mp4": 202, "s3://media/incoming-other/clip.mp4": 422,
                        "s3://media/private/clip.mp4": 422, "s3://other-bucket/incoming/clip.mp4": 422,
                        "s3://media/incoming/uploads/some-job/media.mp4": 422}


def test_file_uris_into_the_upload_store_are_refused(
    fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given an opened folder that also holds the upload store
    fervid_env.setenv("FERVID_FILE_URI_ROOTS", str(tmp_path))
    fervid_env.setenv("FERVID_STORAGE_URL", (tmp_path / "storage").as_uri())
    stored = tmp_path / "storage" / "another-tenants-job" / "media.mp4"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"x")
    with running_api(pg_url, redis_url, fervid_env) as api:
        # when a tenant names an upload directly
        response = api.client.post("/v1/jobs", headers=ALICE, json={"source_uri": stored.as_uri()})
    # then it is refused
    assert response.status_code == 422 and response.json()["error"]["code"] == "source_not_allowed"
