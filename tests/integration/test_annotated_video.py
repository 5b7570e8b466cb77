"""GET /v1/jobs/{id}/annotated.mp4 through the real API and real `fervid worker` processes started cold: rendered
by a worker, the timeline's boxes where the timeline says, stored with the job and counted against its tenant,
refused for jobs that have none, and finished by another worker when the first is killed mid-render."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.media_factory import write_looped_clip
from fervid import annotated
from fervid.db import session_scope
from fervid.jobs import tenant_usage
from fervid.lifecycle import JobStatus
from fervid.settings import get_settings
from fervid.tables import Job
from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_end_to_end import ALICE, all_timeline_items, submit_file, wait_finished
from tests.integration.test_record_store import make_job
from tests.integration.test_viewer_api import BOB, ready
from tests.unit.test_annotate import assert_boxes_drawn_as_the_timeline_says, decoded_frames

pytestmark = pytest.mark.integration


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def stored_bytes(tenant: str) -> int:
    with session_scope() as session:
        return tenant_usage(session, tenant).stored_bytes


def test_a_worker_renders_the_annotated_video_with_the_timelines_boxes_stored_and_deleted_with_the_job(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, tmp_path: Path
) -> None:
    # given a real clip analysed by a worker started cold
    clip = shared_dir / "media" / "single_face.mp4"
    service_env.start_worker()
    job_id = submit_file(client, clip, sample_fps=5)
    assert wait_finished(client, service_env, job_id)["status"] == "succeeded"
    path = f"/v1/jobs/{job_id}/annotated.mp4"
    stored_before = stored_bytes("alice")  # the session's database holds other tests' jobs of alice's

    # when its annotated video is asked for, then asked for again until it is ready
    first = client.get(path, headers=ALICE)
    video = ready(client, path, ALICE)

    # then the first answer says a worker renders it, and the video comes as an MP4 download named after the file
    assert first.status_code == 202 and first.json()["status"] == "rendering" and "retry-after" in first.headers
    assert video.status_code == 200, video.text
    assert video.headers["content-type"] == "video/mp4"
    assert video.headers["content-disposition"] == 'attachment; filename="single_face-annotated.mp4"'
    # and it has every frame of the source at its size, with the timeline's boxes on the sampled frames
    (tmp_path / "annotated.mp4").write_bytes(video.content)
    source, annotated = decoded_frames(clip), decoded_frames(tmp_path / "annotated.mp4")
    assert len(annotated) == len(source) and annotated[0].shape == source[0].shape
    assert_boxes_drawn_as_the_timeline_says(annotated, all_timeline_items(client, job_id, limit=100))
    # and it answers byte ranges (a player seeks in it), to its own tenant only
    ranged = client.get(path, headers={**ALICE, "Range": "bytes=10-109"})
    assert ranged.status_code == 206 and ranged.content == video.content[10:110]
    assert client.get(path, headers=BOB).status_code == 404
    # and its bytes count against the tenant's stored bytes
    assert stored_bytes("alice") == stored_before + len(video.content)

    # when the job is deleted, then the video goes with it
    stored_file = Path(service_env.values["FERVID_STORAGE_URL"].removeprefix("file://")) / job_id / "annotated.mp4"
    assert stored_file.read_bytes() == video.content
    assert client.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
    assert not stored_file.exists()
    assert client.get(path, headers=ALICE).status_code == 404


def test_jobs_without_an_annotated_video_are_refused_with_a_reason_and_a_render_that_fails_says_why(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    # given a job not analysed yet (no worker runs)
    queued = submit_file(client, shared_dir / "media" / "single_face.mp4", sample_fps=5)
    # when its annotated video is asked for, then it is a conflict: nothing to draw yet
    answer = client.get(f"/v1/jobs/{queued}/annotated.mp4", headers=ALICE)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "conflict"
    assert "succeeded" in answer.json()["error"]["message"]

    # given a photo and a clip analysed by a worker
    service_env.start_worker()
    photo = submit_file(client, shared_dir / "media" / "single_face.jpg")
    assert wait_finished(client, service_env, photo)["status"] == "succeeded"
    assert wait_finished(client, service_env, queued)["status"] == "succeeded"
    # when the photo's is asked for, then it is a conflict too: a still has no video
    answer = client.get(f"/v1/jobs/{photo}/annotated.mp4", headers=ALICE)
    assert answer.status_code == 409 and "still image" in answer.json()["error"]["message"]

    # when the clip's stored media is gone before its render
    storage = Path(service_env.values["FERVID_STORAGE_URL"].removeprefix("file://"))
    for upload in (storage / queued).iterdir():
        upload.unlink()
    failed = ready(client, f"/v1/jobs/{queued}/annotated.mp4", ALICE)
    # then the render fails with the reason and its code, and says so again when asked again (no second render)
    assert failed.status_code == 422 and failed.json()["error"]["code"] == "source_unavailable", failed.text
    assert client.get(f"/v1/jobs/{queued}/annotated.mp4", headers=ALICE).json() == failed.json()


def test_a_render_whose_worker_is_killed_is_finished_by_another_worker(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the API and workers judging a render stale after 3 s without a heartbeat
    monkeypatch.setenv("FERVID_STALE_AFTER_S", "3")
    get_settings.cache_clear()
    client = TestClient(client.app)
    clip = write_looped_clip(shared_dir / "media" / "single_face.mp4", tmp_path / "long.mp4", loops=12)
    first_worker = service_env.start_worker(extra={"FERVID_STALE_AFTER_S": "3"})
    job_id = submit_file(client, clip, sample_fps=1)
    assert wait_finished(client, service_env, job_id)["status"] == "succeeded"
    path = f"/v1/jobs/{job_id}/annotated.mp4"

    # when the worker is killed while it renders (it has written frames)
    assert client.get(path, headers=ALICE).status_code == 202

    def rendering_under_way() -> bool:
        answer = client.get(path, headers=ALICE)
        assert answer.status_code == 202, "the render finished before the test could kill its worker"
        return bool(answer.json()["frames_done"])

    wait_for(rendering_under_way, timeout=120, describe=service_env.worker_logs)
    service_env.kill_worker(first_worker)
    killed_at = time.monotonic()
    # and another worker starts
    service_env.start_worker(extra={"FERVID_STALE_AFTER_S": "3"})
    video = ready(client, path, ALICE, timeout_s=240)

    # then the video is whole, made by the second worker once the first had been quiet for the stale time
    assert video.status_code == 200, video.text
    assert time.monotonic() - killed_at >= 3
    (tmp_path / "annotated.mp4").write_bytes(video.content)
    assert len(decoded_frames(tmp_path / "annotated.mp4")) == len(decoded_frames(clip))


@pytest.mark.parametrize("clients", [2, 6])
def test_first_requests_at_once_start_one_render(database: str, clients: int) -> None:
    # given a succeeded video job with no annotated video yet, on PostgreSQL and on SQLite
    job_id = make_job(JobStatus.succeeded, tenant=f"t-{uuid.uuid4().hex[:8]}", media_kind="video")
    start = threading.Barrier(clients)

    def ask() -> annotated.Render:
        start.wait()
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return annotated.request(session, job, stale_after_s=60, max_stored_bytes=1 << 40)

    # when that many clients ask for it at the same moment
    with ThreadPoolExecutor(clients) as pool:
        renders = list(pool.map(lambda _: ask(), range(clients)))

    # then one of them started the render, and every one answers with that render's token
    assert sum(render.started for render in renders) == 1
    assert {render.token for render in renders} == {next(r.token for r in renders if r.started)}
