"""The media-bomb corpus through a real worker: each file ends `failed` with its code, or `succeeded` exactly, in one
delivery of its prepare and of each segment (nothing crashes a worker to be redelivered), and the worker keeps
serving. Files are made on the fly: small on disk, declaring far more work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from bench.media_factory import (
    write_animation,
    write_gif_bomb,
    write_joined_recordings,
    write_jpeg_scan_bomb,
    write_retimed_clip,
    write_still,
    write_tiff,
    write_video,
)
from tests.integration.conftest import ServiceEnv, wait_for

pytestmark = pytest.mark.integration

ALICE = {"Authorization": "Bearer alice-key"}
# 100 frames per file, 1 s segments, and a decoder process of 192 MB: a 24-Mpixel photo (72 MB a copy) is over it.
WORKER_LIMITS = {"FERVID_MAX_FRAMES": "100", "FERVID_SEGMENT_SECONDS": "1", "FERVID_DECODE_MEMORY_MB": "192"}


def cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    target = path.with_name(f"cut-{path.name}")
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def big_photo(path: Path) -> Path:
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(path)
    return path


# name -> (how to make it, the error code it ends with or None for success, segments of a success)
CORPUS: dict[str, tuple[Callable[[Path], Path], str | None, int]] = {
    "scans.jpg": (lambda d: write_jpeg_scan_bomb(d / "scans.jpg", side=2000, scans=300), "media_too_large", 0),
    "huge.jpg": (lambda d: write_jpeg_scan_bomb(d / "huge.jpg", side=60_000, scans=5), "media_too_large", 0),
    "screen.gif": (lambda d: write_gif_bomb(d / "screen.gif"), "media_too_large", 0),
    "many.gif": (lambda d: write_animation(d / "many.gif", [40] * 120), "media_too_large", 0),
    "many.webp": (lambda d: write_animation(d / "many.webp", [40] * 120), "media_too_large", 0),
    "big.png": (lambda d: big_photo(d / "big.png"), "media_too_large", 0),
    "cut.jpg": (lambda d: cut(write_still(d / "photo.jpg"), 0.6), "decode_error", 0),
    "cut.mp4": (lambda d: cut(write_video(d / "clip.mp4"), 0.5), "decode_error", 0),
    "deep.tif": (lambda d: write_tiff(d / "deep.tif", sixteen_bit=True), None, 1),
    "pages.tif": (lambda d: write_tiff(d / "pages.tif", pages=3), None, 1),
    "joined.ts": (lambda d: write_joined_recordings(d / "joined.ts", parts=3, frame_count=24), None, 3),
    "pairs.mkv": (lambda d: write_retimed_clip(write_video(d / "source.mp4", frame_count=48), d / "pairs.mkv"),
                  None, 2),
}


@pytest.fixture
def client(service_env: ServiceEnv) -> TestClient:
    from api.app import create_app

    return TestClient(create_app())


def submit(client: TestClient, path: Path) -> str:
    with path.open("rb") as stream:
        response = client.post("/v1/jobs", headers=ALICE, files={"file": (path.name, stream)},
                               data={"sample_fps": "4"})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_ended(client: TestClient, env: ServiceEnv, job_id: str) -> dict[str, Any]:
    body = wait_for(lambda: (b := client.get(f"/v1/jobs/{job_id}", headers=ALICE).json())["status"]
                    in ("succeeded", "failed", "cancelled") and b, 120, describe=env.worker_logs)
    assert isinstance(body, dict)
    return body


def deliveries(job_id: str) -> tuple[int, list[int]]:
    """How often the job's prepare, and each of its segments, was claimed."""
    from fervid.db import session_scope
    from fervid.tables import Job, Segment

    with session_scope() as session:
        prepares = session.scalars(select(Job.prepare_attempts).where(Job.id == job_id)).one()
        segments = list(session.scalars(select(Segment.attempts).where(Segment.job_id == job_id)
                                        .order_by(Segment.index)))
    return prepares, segments


def test_every_bomb_fails_with_its_code_in_one_delivery_and_the_legitimate_oddities_succeed(
        service_env: ServiceEnv, client: TestClient, shared_dir: Path, tmp_path: Path) -> None:
    # given one worker process with small limits, and the corpus
    worker = service_env.start_worker(concurrency=1, extra=WORKER_LIMITS)
    files = {name: make(tmp_path) for name, (make, _, _) in CORPUS.items()}
    # when each file is submitted
    jobs = {name: submit(client, path) for name, path in files.items()}
    # then each ends as expected, its prepare and its segments delivered once
    for name, job_id in jobs.items():
        _, code, segments = CORPUS[name]
        body = wait_ended(client, service_env, job_id)
        prepares, segment_claims = deliveries(job_id)
        assert prepares == 1, (name, body)
        if code is not None:
            assert (body["status"], (body["error"] or {}).get("code")) == ("failed", code), (name, body)
            assert len(body["error"]["message"]) > 20
            assert all(claims <= 1 for claims in segment_claims), (name, segment_claims)
            continue
        assert body["status"] == "succeeded", (name, body, service_env.worker_logs())
        assert segment_claims == [1] * segments, (name, segment_claims)
        assert body["progress"]["frames_done"] == body["progress"]["frames_total"] > 0
        if name.endswith(".tif"):
            assert (body["media"]["kind"], body["media"]["frame_count"]) == ("image", 1)
        else:
            assert len(body["warnings"]) == 1 and "timestamps repeat" in body["warnings"][0], body
    # and the same worker process still analyses a good clip
    good = wait_ended(client, service_env, submit(client, shared_dir / "media" / "single_face.mp4"))
    assert good["status"] == "succeeded", service_env.worker_logs()
    assert worker.poll() is None
