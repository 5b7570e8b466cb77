"""The viewer's routes over HTTP: the page and its palette, a job's media with Range requests and signed links,
and frame stills, each tenant-checked, on a job a real worker analysed."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fervid.db import get_engine
from fervid.labels import EMOTION_COLOURS, EMOTIONS
from tests.integration.conftest import ServiceEnv
from tests.integration.test_end_to_end import ALICE, submit_file, wait_finished

pytestmark = pytest.mark.integration

BOB = {"Authorization": "Bearer bob-key"}


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def test_the_page_its_files_and_the_palette_are_served_without_a_key(client: TestClient) -> None:
    # when
    page, script, palette = client.get("/"), client.get("/static/viewer-data.js"), client.get("/viewer/palette.json")
    # then
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/viewer.js">' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert palette.json() == {"emotions": list(EMOTIONS), "colours": EMOTION_COLOURS}


def test_media_answers_ranges_for_its_tenant_and_frame_stills_are_the_sampled_frames(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    # given a clip analysed by a real worker
    clip = shared_dir / "media" / "single_face.mp4"
    service_env.start_worker()
    job_id = submit_file(client, clip, sample_fps=5)
    assert wait_finished(client, service_env, job_id)["status"] == "succeeded"
    data = clip.read_bytes()

    # when a byte range of the media is asked for, with the key and with a media link
    ranged = client.get(f"/v1/jobs/{job_id}/media", headers={**ALICE, "Range": "bytes=100-1099"})
    link = client.post(f"/v1/jobs/{job_id}/media-link", headers=ALICE).json()["url"]
    linked = client.get(link, headers={"Range": "bytes=0-9"})
    # then each answers 206 with exactly those bytes
    assert ranged.status_code == 206 and ranged.content == data[100:1100]
    assert ranged.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert ranged.headers["content-type"] == "video/mp4"
    assert linked.status_code == 206 and linked.content == data[:10]
    assert "alice-key" not in link
    # and nobody else gets it: no key, bob's key, a link altered or aimed at another job
    token = link.partition("token=")[2]
    assert client.get(f"/v1/jobs/{job_id}/media").status_code == 401
    assert client.get(f"/v1/jobs/{job_id}/media", headers=BOB).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/media-link", headers=BOB).status_code == 404
    altered = token[:-1] + ("1" if token.endswith("0") else "0")
    assert client.get(f"/v1/jobs/{job_id}/media?token={altered}").status_code == 401
    assert client.get(f"/v1/jobs/{job_id}/media?token=1.{token.partition('.')[2]}").status_code == 401
    other = submit_file(client, clip, sample_fps=1)
    assert client.get(f"/v1/jobs/{other}/media?token={token}").status_code == 401

    # when a sampled frame is asked for as a still
    frame = client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"limit": 5}).json()["items"][4]
    still = client.get(f"/v1/jobs/{job_id}/frames/{frame['frame_index']}.jpg", headers=ALICE)
    # then it is that frame, at the size the boxes are measured in
    assert still.status_code == 200 and still.headers["content-type"] == "image/jpeg"
    image = np.asarray(Image.open(io.BytesIO(still.content)).convert("L"), dtype=np.float32)
    assert image.shape == (360, 640)
    import av

    with av.open(str(clip)) as container:
        decoded = next(f for n, f in enumerate(container.decode(video=0)) if n == frame["frame_index"])
    expected = np.asarray(decoded.to_image().convert("L"), dtype=np.float32)
    assert np.abs(image - expected).mean() < 4.0
    # and a frame that was not sampled, or another tenant, gets 404
    assert client.get(f"/v1/jobs/{job_id}/frames/{frame['frame_index'] + 1}.jpg", headers=ALICE).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/frames/{frame['frame_index']}.jpg", headers=BOB).status_code == 404


def test_a_still_holds_no_database_connection_while_it_decodes(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a still analysed by a real worker, and its decode held until released (standing for a slow one: a late
    # frame of a long stream, a large photo)
    service_env.start_worker()
    job_id = submit_file(client, shared_dir / "media" / "single_face.jpg")
    assert wait_finished(client, service_env, job_id)["status"] == "succeeded"
    decoding, release = threading.Event(), threading.Event()

    def slow_decode(*_: object) -> bytes:
        decoding.set()
        release.wait(30)
        return b"\xff\xd8jpeg"

    monkeypatch.setattr("api.viewer.frame_jpeg", slow_decode)
    pool = get_engine().pool
    # when a still is asked for, and looked at while it decodes
    answer: list[int] = []
    request = threading.Thread(target=lambda: answer.append(
        client.get(f"/v1/jobs/{job_id}/frames/0.jpg", headers=ALICE).status_code))
    request.start()
    assert decoding.wait(30)
    held_while_decoding = pool.checkedout()  # type: ignore[attr-defined]
    release.set()
    request.join(30)
    # then the request held none of the connections every other request needs, and still answered
    assert held_while_decoding == 0 and answer == [200]
