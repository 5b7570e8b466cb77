"""file:// sources read the workers' disks: accepted only under the folders the operator opened."""

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
