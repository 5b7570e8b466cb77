"""Submit -> real worker process -> succeeded -> timeline, on real clips, PostgreSQL and Redis."""

from __future__ import annotations

import http.server
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.media_factory import mdat_range, write_audio, write_png_bomb, write_video
from tests.integration.conftest import ServiceEnv, wait_for

pytestmark = pytest.mark.integration

ALICE = {"Authorization": "Bearer alice-key"}
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def submit_file(client: TestClient, path: Path, **fields: Any) -> str:
    with path.open("rb") as stream:
        response = client.post("/v1/jobs", headers=ALICE, files={"file": (path.name, stream)},
                               data={k: str(v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_finished(client: TestClient, env: ServiceEnv, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()
        return body if body["status"] in TERMINAL else None

    return wait_for(finished, timeout, describe=env.worker_logs)  # type: ignore[return-value]


def all_timeline_items(client: TestClient, job_id: str, limit: int = 4) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params=params).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def forget_earlier_workers() -> None:
    """The session's database outlives each test's workers; their rows would stay listed for FERVID_STALE_AFTER_S."""
    from sqlalchemy import delete

    from fervid.db import session_scope
    from fervid.tables import Worker

    with session_scope() as session:
        session.execute(delete(Worker))


def test_single_face_clip_gives_one_track_on_every_sampled_frame(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    # given a running worker and a 2.4 s, 30 fps clip of one face
    forget_earlier_workers()
    service_env.start_worker()
    # when it is submitted at 5 fps
    job_id = submit_file(client, shared_dir / "media" / "single_face.mp4", sample_fps=5)
    job = wait_finished(client, service_env, job_id)
    # then the job succeeded with the sampling rule's frames: t = 0, 0.2, ... 2.2 s -> frames 0, 6, 12, ..., 66
    assert job["status"] == "succeeded", job
    assert job["media"]["kind"] == "video" and job["media"]["frame_count"] == 72
    assert (job["media"]["width"], job["media"]["height"]) == (640, 360)
    assert job["progress"] == {"frames_done": 12, "frames_total": 12}
    assert job["model"] == {"name": "tiny-test-classifier", "version": "tiny-0", "backend": "ort-cpu",
                            "precision": "fp32", "detector": "yunet"}
    # and /readyz lists the worker process with what it runs
    ready = client.get("/readyz").json()
    (worker,) = ready["workers"]
    assert (worker["detector"], worker["backend"], worker["precision"]) == ("yunet", "ort-cpu", "fp32")
    assert worker["detector_reason"] == f"FERVID_DETECTOR_PATH {service_env.values['FERVID_DETECTOR_PATH']}"
    assert ready["warnings"] == []
    items = all_timeline_items(client, job_id)
    assert [item["frame_index"] for item in items] == [6 * k for k in range(12)]
    assert all(len(item["faces"]) == 1 for item in items)
    assert len({item["faces"][0]["track_id"] for item in items}) == 1
    face = items[0]["faces"][0]
    assert abs(sum(face["emotions"].values()) - 1.0) < 1e-4
    assert face["dominant"] == max(face["emotions"], key=face["emotions"].get)
    summary = client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE).json()
    assert len(summary["tracks"]) == 1 and summary["tracks"][0]["frames"] == 12
    # and every face is sharp, frontal and upright, so reliable and counted
    quality = face["quality"]
    assert quality["reliable"] and quality["sharpness"] > 1000 and abs(quality["yaw_deg"]) < 10
    assert abs(quality["roll_deg"]) < 10 and quality["size_px"] > 200
    assert summary["overall"]["faces_left_out"] == 0


def test_a_blurred_face_is_found_but_not_trusted_and_left_out_of_the_summary(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, tmp_path: Path
) -> None:
    # given the one-face clip blurred (a Gaussian of 4 px: YuNet still finds the face), and a worker
    import av
    import cv2

    with av.open(str(shared_dir / "media" / "single_face.mp4")) as container:
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)][:24]
    blurred = tmp_path / "blurred.mp4"
    with av.open(str(blurred), "w") as output:
        stream = output.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for image in frames:
            packet = stream.encode(av.VideoFrame.from_ndarray(cv2.GaussianBlur(image, (0, 0), 4), format="bgr24"))
            output.mux(packet)
        output.mux(stream.encode())
    service_env.start_worker()
    # when it is analysed
    job_id = submit_file(client, blurred, sample_fps=5)
    assert wait_finished(client, service_env, job_id)["status"] == "succeeded"
    # then each face is in the timeline, marked not reliable because blurred
    faces = [face for item in all_timeline_items(client, job_id) for face in item["faces"]]
    assert len(faces) == 4 and all(face["quality"]["unreliable_because"] == ["blurred"] for face in faces)
    # and the summary counts none of them, saying so, unless every face is asked for
    summary = client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE).json()
    assert summary["tracks"] == [] and summary["overall"]["faces_left_out"] == 4
    every = client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE, params={"faces": "all"}).json()
    assert len(every["tracks"]) == 1 and every["tracks"][0]["frames"] == 4


def test_rabbitmq_works_as_the_broker_for_jobs_split_across_two_workers(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu import Connection

    from fervid.queue import celery_app
    from fervid.settings import get_settings

    # given the API and two worker processes on RabbitMQ instead of Redis, with 1 s segments
    for name, value in {"FERVID_BROKER_URL": amqp_url, "FERVID_SEGMENT_SECONDS": "1"}.items():
        monkeypatch.setenv(name, value)
        service_env.values[name] = value
    get_settings.cache_clear()
    celery_app.cache_clear()
    service_env.start_worker()
    service_env.start_worker()
    try:
        # when a clip is submitted
        job = wait_finished(client, service_env, submit_file(client, shared_dir / "media" / "single_face.mp4"))
        ready = client.get("/readyz")
    finally:
        with Connection(amqp_url) as connection:  # the test's queue, so RabbitMQ keeps nothing of it
            connection.default_channel.queue_delete(service_env.values["FERVID_QUEUE"])
    # then every sampled frame was analysed, and readiness checked the broker actually in use
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"frames_done": 12, "frames_total": 12}
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"


def test_segments_shared_by_two_workers_give_the_same_timeline_with_one_track(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    # given the clip analysed whole, then split into 1 s segments processed by two worker processes
    clip = shared_dir / "media" / "single_face.mp4"
    service_env.start_worker()
    whole = wait_finished(client, service_env, submit_file(client, clip, sample_fps=5))
    service_env.values["FERVID_SEGMENT_SECONDS"] = "1"
    for process in list(service_env.workers):
        service_env.kill_worker(process)
    service_env.start_worker(extra={"FERVID_SEGMENT_SECONDS": "1"})
    service_env.start_worker(extra={"FERVID_SEGMENT_SECONDS": "1"})
    split = wait_finished(client, service_env, submit_file(client, clip, sample_fps=5))
    # then both succeed with identical frames and faces, and stitching keeps one track across the boundaries
    assert whole["status"] == split["status"] == "succeeded"
    whole_items = all_timeline_items(client, whole["job_id"], limit=100)
    split_items = all_timeline_items(client, split["job_id"], limit=100)
    assert [i["frame_index"] for i in whole_items] == [i["frame_index"] for i in split_items]
    assert [len(i["faces"]) for i in whole_items] == [len(i["faces"]) for i in split_items]
    assert len({f["track_id"] for i in split_items for f in i["faces"]}) == 1


def test_a_worker_that_cannot_have_yunet_runs_haar_and_says_so_in_jobs_and_readyz(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker with no FERVID_DETECTOR_PATH, an empty model cache and FERVID_DETECTOR_URL empty (air-gapped)
    monkeypatch.delenv("FERVID_DETECTOR_PATH")
    del service_env.values["FERVID_DETECTOR_PATH"]
    forget_earlier_workers()
    service_env.start_worker()
    # when a still is analysed
    job = wait_finished(client, service_env, submit_file(client, shared_dir / "media" / "astronaut.png"))
    # then the job names the Haar cascade it ran, /readyz warns about the worker (still ready), and so did its log
    assert job["status"] == "succeeded" and job["model"]["detector"] == "haar", job
    ready = client.get("/readyz")
    assert ready.status_code == 200
    (worker,) = ready.json()["workers"]
    assert worker["detector"] == "haar" and "FERVID_DETECTOR_URL is empty" in worker["detector_reason"]
    (warning,) = ready.json()["warnings"]
    assert worker["name"] in warning and "Haar" in warning and "fervid models fetch" in warning
    assert "falling back to the Haar cascade" in service_env.worker_logs()


def test_a_face_that_appears_is_only_on_the_later_frames(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    service_env.start_worker()
    job = wait_finished(client, service_env, submit_file(client, shared_dir / "media" / "noface_face.mov",
                                                         sample_fps=2))
    assert job["status"] == "succeeded", job
    items = all_timeline_items(client, job["job_id"], limit=50)
    with_face = [bool(item["faces"]) for item in items]
    assert not with_face[0] and with_face[-1]  # no face at first, a face at the end


def test_an_image_is_one_frame(service_env: ServiceEnv, client: TestClient, shared_dir: Path) -> None:
    service_env.start_worker()
    job = wait_finished(client, service_env, submit_file(client, shared_dir / "media" / "astronaut.png"))
    assert job["status"] == "succeeded" and job["media"]["kind"] == "image" and job["media"]["frame_count"] == 1
    (item,) = all_timeline_items(client, job["job_id"])
    assert item["frame_index"] == 0 and item["timestamp_ms"] == 0 and len(item["faces"]) == 1


def test_bad_inputs_fail_cleanly_and_the_worker_keeps_serving(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path, tmp_path: Path
) -> None:
    # given a worker and a set of broken files
    worker = service_env.start_worker()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    noise = tmp_path / "noise.mov"
    noise.write_bytes(random.Random(3).randbytes(200_000))
    clip = (shared_dir / "media" / "single_face.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip[: len(clip) // 3])
    bomb = write_png_bomb(tmp_path / "bomb.png")
    audio = write_audio(tmp_path / "voice.m4a")
    damaged = write_video(tmp_path / "damaged.mp4", frame_count=72, gop=12)
    start, end = mdat_range(damaged)
    data = bytearray(damaged.read_bytes())
    # A fixed pattern, so a failure here can be replayed byte for byte.
    middle = slice(start + (end - start) * 2 // 5, start + (end - start) * 3 // 5)
    data[middle] = random.Random(5).randbytes(middle.stop - middle.start)
    damaged.write_bytes(bytes(data))
    expected = {text: {"unsupported_media"}, noise: {"unsupported_media"}, bomb: {"media_too_large"},
                audio: {"unsupported_media"}, truncated: {"decode_error"},
                damaged: {None}}  # None: succeeded on the frames that decode, with a warning
    # when each is submitted
    jobs = {path: submit_file(client, path) for path in expected}
    # then each ends with its code and a message a person can read
    for path, job_id in jobs.items():
        job = wait_finished(client, service_env, job_id)
        code = job["error"]["code"] if job["error"] else None
        assert code in expected[path], (path.name, job["error"], job)
        if job["error"]:
            assert job["status"] == "failed" and len(job["error"]["message"]) > 10
        else:
            assert job["status"] == "succeeded" and len(job["warnings"]) == 1, job
            assert 0 < job["progress"]["frames_done"] < job["progress"]["frames_total"]
    # and the same worker process still analyses a good clip
    good = wait_finished(client, service_env, submit_file(client, shared_dir / "media" / "single_face.mp4"))
    assert good["status"] == "succeeded"
    assert worker.poll() is None


class WebhookReceiver:
    """A real HTTP server that records the JSON bodies POSTed to it: on loopback, or on every address with the name
    containers reach this machine by (`url_host`)."""

    def __init__(self, bind: str = "127.0.0.1", url_host: str = "127.0.0.1") -> None:
        received: list[dict[str, Any]] = []
        signed: list[tuple[str, bytes]] = []  # (X-Fervid-Signature, raw body) of each POST
        self.received = received
        self.signed = signed

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signed.append((self.headers.get("X-Fervid-Signature", ""), body))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((bind, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{url_host}:{self.server.server_address[1]}/hook"


def test_webhooks_announce_success_and_cancellation(
    service_env: ServiceEnv, client: TestClient, shared_dir: Path
) -> None:
    # given a receiver, and a job submitted with it while no worker runs yet
    receiver = WebhookReceiver()
    try:
        cancelled = submit_file(client, shared_dir / "media" / "single_face.jpg", webhook_url=receiver.url)
        # when that job is cancelled, and another one runs to completion
        assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=ALICE).json()["status"] == "cancelled"
        service_env.start_worker()
        done = submit_file(client, shared_dir / "media" / "single_face.jpg", webhook_url=receiver.url)
        wait_finished(client, service_env, done)
        # then the receiver heard about both, with their final status
        wait_for(lambda: len(receiver.received) >= 2, 30, describe=service_env.worker_logs)
        assert {(body["job_id"], body["status"]) for body in receiver.received} == {
            (cancelled, "cancelled"), (done, "succeeded")}
    finally:
        receiver.server.shutdown()
