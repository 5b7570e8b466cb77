"""Uploads that name other media: a real worker opens only the uploaded file, and no connection leaves it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import ServiceEnv
from tests.integration.test_end_to_end import forget_earlier_workers, submit_file, wait_finished
from tests.unit.test_media_lists import playlist
from tests.unit.test_netpolicy import ConnectionCounter

pytestmark = pytest.mark.integration


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def test_uploaded_playlists_and_concat_lists_fail_unsupported_and_reach_nothing(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, tmp_path: Path
) -> None:
    # given a running worker, a loopback listener, and uploads that name it or a file on the worker's disk
    forget_earlier_workers()
    service_env.start_worker()
    listener = ConnectionCounter()
    try:
        remote = tmp_path / "stream.m3u8"
        remote.write_text(playlist(f"http://127.0.0.1:{listener.port}/segment.ts"))
        local = tmp_path / "list.ffconcat"
        local.write_text(f"ffconcat version 1.0\nfile {shared_dir / 'media' / 'single_face.mp4'}\n")
        # when each is submitted
        finished = [wait_finished(client, service_env, submit_file(client, path)) for path in (remote, local)]
        # then each fails as unsupported media, and nothing connected to the listener
        assert [(job["status"], job["error"]["code"]) for job in finished] == [("failed", "unsupported_media")] * 2
        assert listener.connections() == 0
    finally:
        listener.close()
