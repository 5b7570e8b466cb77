"""The viewer's routes over HTTP: the page and its palette, a job's media with Range requests and signed links,
and frame stills rendered by workers, each tenant-checked, on jobs a real worker analysed."""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from api.stills import MAX_PENDING_PER_TENANT, ask_for_still, forget_pending
from bench.media_factory import HEIGHT, WIDTH, read_index, write_joined_recordings
from fervid.errors import TooManyRequests
from fervid.labels import EMOTION_COLOURS, EMOTIONS, TRACK_COLOURS
from tests.conftest import FileServer
from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_api import closed_port, fervid_api_process
from tests.integration.test_end_to_end import ALICE, submit_file, wait_finished

pytestmark = pytest.mark.integration

BOB = {"Authorization": "Bearer bob-key"}


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def ready(client: TestClient | httpx.Client, path: str, headers: dict[str, str],
          timeout_s: float = 120.0) -> httpx.Response:
    """GET `path` again while it answers 202 (a worker renders, or the API fetches) or 429 (too many such at once),
    after each Retry-After, as the viewer does."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.get(path, headers=headers)
        if answer.status_code not in (202, 429):
            return answer
        assert time.monotonic() < deadline, f"{path} still answers {answer.status_code} after {timeout_s:.0f} s"
        time.sleep(float(answer.headers["retry-after"]))


def test_the_page_its_files_and_the_palette_are_served_without_a_key(client: TestClient) -> None:
    # when
    page, script, palette = client.get("/"), client.get("/static/viewer-data.js"), client.get("/viewer/palette.json")
    # then
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/viewer.js">' in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert palette.json() == {"emotions": list(EMOTIONS), "colours": EMOTION_COLOURS,
                              "track_colours": list(TRACK_COLOURS),
                              "statuses": ["queued", "preparing", "running", "succeeded", "failed", "cancelled"],
                              "active_statuses": ["queued", "preparing", "running"]}


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
    still = ready(client, f"/v1/jobs/{job_id}/frames/{frame['frame_index']}.jpg", ALICE)
    # then a worker rendered that frame, at the size the boxes are measured in
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




def api_pid(port: int) -> int:
    """The pid of the `fervid api` process listening on `port` (fervid_api_process starts it)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().split(b"\0")
            if b"api" in words and str(port).encode() in words:
                return int(cmdline.parent.name)
    raise AssertionError(f"no fervid api process on port {port}")


def test_stills_are_rendered_by_workers_and_a_dozen_clients_hammering_them_leave_other_tenants_answered_at_once(
    service_env: ServiceEnv, tmp_path: Path
) -> None:
    # given a real `fervid api` and worker, and a 40 s stream timed by order (recordings joined end to end) analysed
    # at 1 frame a second
    joined = write_joined_recordings(tmp_path / "joined.ts", parts=4, frame_count=240)
    service_env.start_worker()
    with fervid_api_process({**os.environ, **service_env.values}, tmp_path / "api.log") as base, \
            httpx.Client(base_url=base, timeout=30) as api:
        with joined.open("rb") as stream:
            job_id = api.post("/v1/jobs", headers=ALICE, files={"file": ("joined.ts", stream)},
                              data={"sample_fps": "1"}).json()["job_id"]
        wait_for(lambda: api.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["status"] == "succeeded", 180,
                 describe=service_env.worker_logs)
        items = api.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"limit": 1000}).json()["items"]
        late_frames = [item["frame_index"] for item in items[-12:]]
        assert len(items) >= 36 and late_frames[-1] > 900

        # when 12 clients ask for the stills of its 12 last sampled frames at once (each again while it is 202),
        # and bob lists his jobs meanwhile
        def still(frame_index: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=30) as own:
                return ready(own, f"/v1/jobs/{job_id}/frames/{frame_index}.jpg", ALICE)

        bob_seconds: list[float] = []
        with ThreadPoolExecutor(max_workers=12) as clients:
            stills = [clients.submit(still, frame_index) for frame_index in late_frames]
            while not all(future.done() for future in stills) or len(bob_seconds) < 10:
                started = time.perf_counter()
                assert api.get("/v1/jobs", headers=BOB).status_code == 200
                bob_seconds.append(time.perf_counter() - started)
                time.sleep(0.1)

        # then every still is its own frame, upright
        for frame_index, future in zip(late_frames, stills, strict=True):
            answer = future.result()
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
            image = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))[:, :, ::-1]
            assert image.shape[:2] == (HEIGHT, WIDTH) and read_index(image) == frame_index
        # and bob was answered within a second each time, by an API that never loaded a media decoder
        assert max(bob_seconds) < 1.0, bob_seconds
        maps = Path(f"/proc/{api_pid(int(base.rpartition(':')[2]))}/maps").read_text()
        assert "libavcodec" not in maps and "libjpeg" not in maps

        # and the stills are deleted with the job
        stills_folder = Path(service_env.values["FERVID_STORAGE_URL"].removeprefix("file://")) / job_id / "stills"
        assert len(list(stills_folder.glob("*.jpg"))) == 12
        assert api.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
        assert not stills_folder.parent.exists()


def test_a_tenant_has_a_few_stills_pending_at_once_and_each_is_asked_of_a_worker_once(
    service_env: ServiceEnv, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given real Redis for the pending marks, and the render tasks counted instead of sent
    connection = redis.Redis.from_url(redis_url)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr("api.stills.send_render_still", lambda job, frame, queue: sent.append((job, frame)))

    # when the tenant asks for MAX_PENDING_PER_TENANT stills, each twice
    for frame in range(MAX_PENDING_PER_TENANT):
        ask_for_still(connection, tenant, "job", frame, "q")
        ask_for_still(connection, tenant, "job", frame, "q")
    # then each was sent to a worker once, and one more is refused 429 until one of them is served
    assert sent == [("job", frame) for frame in range(MAX_PENDING_PER_TENANT)]
    with pytest.raises(TooManyRequests):
        ask_for_still(connection, tenant, "job", 99, "q")
    ask_for_still(connection, f"{tenant}-other", "job", 99, "q")  # another tenant is not held back
    forget_pending(connection, tenant, "job", 0)
    ask_for_still(connection, tenant, "job", 99, "q")
    assert sent[-2:] == [("job", 99), ("job", 99)]


def test_remote_media_is_fetched_in_the_background_then_served_and_a_dead_source_answers_its_error(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    # given a job whose source is an http URL, and one whose source answers nothing
    clip = shared_dir / "media" / "single_face.mp4"
    server = FileServer(clip)
    try:
        job_id = client.post("/v1/jobs", headers=ALICE, json={"source_uri": server.url}).json()["job_id"]
        dead = client.post("/v1/jobs", headers=ALICE,
                           json={"source_uri": f"http://127.0.0.1:{closed_port()}/gone.mp4"}).json()["job_id"]

        # when the viewer asks for the first's media
        first = client.get(f"/v1/jobs/{job_id}/media", headers={**ALICE, "Range": "bytes=0-9"})
        # then it is fetched in the background (202 with Retry-After), then served from this machine's cache
        assert first.status_code == 202 and int(first.headers["retry-after"]) >= 1
        served = ready(client, f"/v1/jobs/{job_id}/media", {**ALICE, "Range": "bytes=0-9"})
        assert served.status_code == 206 and served.content == clip.read_bytes()[:10]

        # and the dead source answers its error once its fetch failed, not 202 for ever
        failed = ready(client, f"/v1/jobs/{dead}/media", ALICE, timeout_s=60)
        assert failed.status_code == 422 and failed.json()["error"]["code"] == "source_unavailable"
    finally:
        server.server.shutdown()
