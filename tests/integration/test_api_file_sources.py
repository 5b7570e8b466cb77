"""file:// and s3:// sources read what the workers can read: accepted only under the locations the operator opened
for the submitting tenant, never from the upload store, which holds every tenant's uploads, and checked again by
the worker that reads the file (a real `fervid worker`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_api import ALICE, BOB, running_api
from tests.unit.test_sources import unread

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


def test_a_tenant_names_only_its_own_folder_and_learns_nothing_of_others(
    fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    # given a folder per tenant; bob's holds a file
    media = tmp_path / "media"
    fervid_env.setenv("FERVID_FILE_URI_ROOTS", f"{media}/{{tenant}}")
    with running_api(pg_url, redis_url, fervid_env) as api:
        for tenant in (api.alice, api.bob):
            (media / tenant).mkdir(parents=True)
        (media / api.bob / "private.mp4").write_bytes(b"x")

        def submit(uri: str, headers: dict[str, str] = ALICE) -> Any:
            return api.client.post("/v1/jobs", headers=headers, json={"source_uri": uri})

        # when alice names her own folder, bob's file, a file bob does not have, and bob's file through `..`
        own = submit((media / api.alice / "clip.mp4").as_uri())
        bobs = submit((media / api.bob / "private.mp4").as_uri())
        absent = submit((media / api.bob / "absent.mp4").as_uri())
        escaping = submit(f"file://{media}/{api.alice}/../{api.bob}/private.mp4")
        # and bob names his own
        his = submit((media / api.bob / "private.mp4").as_uri(), BOB)
    # then only each tenant's own folder is accepted, and bob's file reads exactly as a file that is not there
    assert own.status_code == 202 and his.status_code == 202, (own.text, his.text)
    assert bobs.status_code == absent.status_code == escaping.status_code == 422
    assert bobs.json() == absent.json() == escaping.json()
    assert bobs.json()["error"]["code"] == "source_not_allowed"


def wait_ended(client: TestClient, env: ServiceEnv, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        body = dict(client.get(f"/v1/jobs/{job_id}", headers=ALICE).json())
        return body if body["status"] in ("succeeded", "failed") else None

    body = wait_for(ended, 240, describe=env.worker_logs)
    assert isinstance(body, dict)
    return body


def test_a_file_swapped_for_a_symlink_after_the_api_accepted_it_is_refused_by_the_worker(
    service_env: ServiceEnv, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.app import create_app
    from fervid.settings import get_settings

    # given a folder per tenant: alice has two real clips, bob one
    media = tmp_path / "media"
    clip = shared_dir / "media" / "single_face.mp4"
    for tenant, names in (("alice", ("clip.mp4", "swapped.mp4")), ("bob", ("private.mp4",))):
        (media / tenant).mkdir(parents=True)
        for name in names:
            shutil.copyfile(clip, media / tenant / name)
    monkeypatch.setenv("FERVID_FILE_URI_ROOTS", f"{media}/{{tenant}}")
    get_settings.cache_clear()
    client = TestClient(create_app())
    # and alice's jobs on her clip, on the clip she will swap, and on a file that is not there, all accepted
    ids = {}
    for name in ("clip.mp4", "swapped.mp4", "missing.mp4"):
        response = client.post("/v1/jobs", headers=ALICE, json={"source_uri": (media / "alice" / name).as_uri()})
        assert response.status_code == 202, response.text
        ids[name] = response.json()["job_id"]
    # when, before any worker reads it, alice swaps her clip for a symlink to bob's (marked unread)
    (media / "alice" / "swapped.mp4").unlink()
    (media / "alice" / "swapped.mp4").symlink_to(media / "bob" / "private.mp4")
    still_unread = unread(media / "bob" / "private.mp4")
    service_env.start_worker()
    done = {name: wait_ended(client, service_env, job_id) for name, job_id in ids.items()}
    # then her own clip is analysed; the swapped one fails source_not_allowed exactly as the missing one does
    assert done["clip.mp4"]["status"] == "succeeded", done["clip.mp4"]
    swapped, missing = done["swapped.mp4"], done["missing.mp4"]
    assert swapped["status"] == missing["status"] == "failed"
    assert swapped["error"] == missing["error"] and swapped["error"]["code"] == "source_not_allowed"
    # and the viewer serves her clip (through the held descriptor) but not the swapped one
    served = client.get(f"/v1/jobs/{ids['clip.mp4']}/media", headers=ALICE)
    assert served.status_code == 200 and served.content == clip.read_bytes()
    ranged = client.get(f"/v1/jobs/{ids['clip.mp4']}/media", headers={**ALICE, "Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == clip.read_bytes()[:100]
    refused = client.get(f"/v1/jobs/{ids['swapped.mp4']}/media", headers=ALICE)
    assert refused.status_code == 422 and refused.json()["error"] == swapped["error"]
    # and no byte of bob's clip was read
    assert still_unread()
