"""`docker compose up --scale worker=2` on empty volumes, used as a user would through the published port: an upload
with a webhook, the results in every form, a busy worker killed and Redis and PostgreSQL restarted mid-job, and
`down` + `up` keeping what was done."""

from __future__ import annotations

import io
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import av
import pytest

from bench.media_factory import write_looped_clip
from fervid.webhooks import tenant_signing_key, verify
from tests.conftest import SHARED
from tests.deploy.conftest import Api, Compose, api_key, wait_until
from tests.integration.test_end_to_end import WebhookReceiver

pytestmark = pytest.mark.deploy

# What the tests change, and only that: a port of their own, a way to this machine's webhook receiver (a private
# address, so allowed), and a reaper that notices a killed worker within seconds instead of a minute.
RUN_OVERRIDE = """services:
  api:
    ports: !override ["127.0.0.1::8000"]
    extra_hosts: ["host.docker.internal:host-gateway"]
    environment:
      FERVID_ALLOW_PRIVATE_URLS: "true"
  worker:
    extra_hosts: ["host.docker.internal:host-gateway"]
    environment:
      FERVID_ALLOW_PRIVATE_URLS: "true"
      FERVID_REAPER_INTERVAL_S: "2"
      FERVID_STALE_AFTER_S: "15"
      FERVID_SEGMENT_SECONDS: "20"
"""
WORKERS = 2


@dataclass
class Stack:
    compose: Compose
    api: Api
    webhook_secret: str
    up_at: float  # time.monotonic() when `up` was run

    def connect(self) -> None:
        """The API's published port, found again (an `up` after a `down` publishes another)."""
        host_port = self.compose.run("port", "api", "8000").stdout.strip()
        self.api.base = f"http://{host_port}"
        wait_until(lambda: self.api.request("GET", "/healthz")[0] == 200, 120, self.compose.logs)

    def up(self) -> None:
        self.up_at = time.monotonic()
        self.compose.run("up", "-d", "--scale", f"worker={WORKERS}", timeout=600)
        self.connect()


@pytest.fixture(scope="module")
def stack(built_images: Path) -> Iterator[Stack]:
    (built_images / "run.override.yml").write_text(RUN_OVERRIDE)
    secret = secrets.token_hex(24)
    key = api_key()
    compose = Compose(built_images, f"fervid-test-{uuid.uuid4().hex[:8]}", ["docker-compose.yml", "run.override.yml"],
                      {"FERVID_API_KEYS": key, "FERVID_WEBHOOK_SECRETS": f"v1:{secret}"})
    stack = Stack(compose, Api("", key.partition(":")[2]), secret, 0.0)
    try:
        stack.up()
        yield stack
    finally:
        compose.down()


def all_frames(api: Api, job_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = api.json(f"/v1/jobs/{job_id}/timeline?{urlencode(query)}")
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def test_a_fresh_stack_analyses_an_upload_sends_its_signed_webhook_and_serves_every_result(stack: Stack) -> None:
    # given the stack just started on empty volumes, and a receiver for webhooks
    receiver = WebhookReceiver(bind="0.0.0.0", url_host="host.docker.internal")
    try:
        # when a user uploads a clip with a webhook
        job_id = stack.api.upload(SHARED / "media" / "single_face.mp4", sample_fps="4", webhook_url=receiver.url)
        job = stack.api.wait_finished(job_id, 240, stack.compose.logs)
        first_result_s = time.monotonic() - stack.up_at

        # then it succeeded, and the webhook came signed with the tenant's key
        assert job["status"] == "succeeded", job
        wait_until(lambda: receiver.signed, 60, stack.compose.logs)
        (signature, body), = receiver.signed
        assert verify({"v1": tenant_signing_key(stack.webhook_secret, "alice")}, signature, body, time.time())
        assert receiver.received[0]["job_id"] == job_id and receiver.received[0]["status"] == "succeeded"
    finally:
        receiver.server.shutdown()
    print(f"first result {first_result_s:.1f} s after `docker compose up`")

    # and the results read in every form: timeline, summary, CSV, plot, viewer page, a frame still, the annotated video
    frames = all_frames(stack.api, job_id)
    assert len(frames) == job["progress"]["frames_total"] == 10  # 2.4 s at 4 fps
    assert all(frame["faces"] for frame in frames)
    assert stack.api.json(f"/v1/jobs/{job_id}/summary")["tracks"]
    status, csv, headers = stack.api.request("GET", f"/v1/jobs/{job_id}/timeline.csv")
    assert status == 200 and headers["content-type"].startswith("text/csv") and len(csv.splitlines()) > len(frames)
    status, png, _ = stack.api.request("GET", f"/v1/jobs/{job_id}/plot.png")
    assert status == 200 and png.startswith(b"\x89PNG")
    status, page, headers = stack.api.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in page.lower()

    def still() -> bytes | None:  # 202 while a worker renders it (the API image has no decoder)
        status, jpeg, _ = stack.api.request("GET", f"/v1/jobs/{job_id}/frames/{frames[-1]['frame_index']}.jpg")
        assert status in (200, 202), (status, jpeg[:300])
        return jpeg if status == 200 else None

    jpeg = wait_until(still, 120, stack.compose.logs)
    assert isinstance(jpeg, bytes) and jpeg.startswith(b"\xff\xd8")

    def annotated() -> bytes | None:  # 202 while a worker renders it, then the MP4 the worker stored
        status, video, _ = stack.api.request("GET", f"/v1/jobs/{job_id}/annotated.mp4")
        assert status in (200, 202), (status, video[:300])
        return video if status == 200 else None

    video = wait_until(annotated, 180, stack.compose.logs)
    assert isinstance(video, bytes) and video[4:8] == b"ftyp"
    with av.open(io.BytesIO(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 72  # every frame of the 2.4 s clip at 30 fps

    # and every container says it is healthy: the API, and each worker once its pool process loaded its models
    def all_healthy() -> bool:
        containers = stack.compose.containers("api") + stack.compose.containers("worker")
        return len(containers) == 1 + WORKERS and all(stack.compose.health(c) == "healthy" for c in containers)

    wait_until(all_healthy, 120, stack.compose.logs)


def busiest_worker(compose: Compose) -> str:
    """The worker container using the most CPU now."""
    containers = compose.containers("worker")
    stats = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}}", *containers],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    usage = {line.split()[0]: float(line.split()[1].rstrip("%")) for line in stats if line.strip()}
    return max(containers, key=lambda container: usage.get(container[:12], 0.0))


def test_a_job_survives_a_killed_worker_and_restarts_of_redis_and_postgres(stack: Stack, tmp_path: Path) -> None:
    # given a 2-minute real clip sampled at 10 fps: 1,200 frames in 6 segments shared by the two workers
    clip = write_looped_clip(SHARED / "media" / "single_face.mp4", tmp_path / "long.mp4", loops=50, fps=30)
    job_id = stack.api.upload(clip, sample_fps="10")

    def reached(share: float) -> float:
        """Waits until the job has done `share` of its frames (through API answers that may fail while a service
        restarts); the share done then."""
        def done() -> float | None:
            progress = stack.api.json(f"/v1/jobs/{job_id}")["progress"]
            now = float(progress["frames_done"]) / float(progress["frames_total"] or 1)
            return now if now >= share else None

        return float(wait_until(done, 300, stack.compose.logs))  # type: ignore[arg-type]

    # when, as it runs, the busiest worker container is killed, then Redis and then PostgreSQL restart
    print(f"killing the busiest worker at {reached(0.15):.0%}")
    subprocess.run(["docker", "kill", busiest_worker(stack.compose)], check=True, capture_output=True)
    print(f"restarting redis at {reached(0.4):.0%}")
    stack.compose.run("restart", "redis")
    print(f"restarting postgres at {reached(0.65):.0%}")
    stack.compose.run("restart", "postgres")

    # then the job succeeds with every sampled frame, each once
    job = stack.api.wait_finished(job_id, 600, stack.compose.logs)
    assert job["status"] == "succeeded", job
    indices = [frame["frame_index"] for frame in all_frames(stack.api, job_id)]
    assert len(indices) == len(set(indices)) == job["progress"]["frames_total"] == 1200


def test_down_then_up_keeps_earlier_jobs_readable(stack: Stack) -> None:
    # given a finished job
    job_id = stack.api.upload(SHARED / "media" / "single_face.jpg")
    before = stack.api.wait_finished(job_id, 240, stack.compose.logs)
    assert before["status"] == "succeeded", before
    frames_before = all_frames(stack.api, job_id)

    # when the stack goes down (volumes kept) and comes up again
    stack.compose.run("down", "--timeout", "10")
    stack.up()

    # then the job and its results are there as they were, and new jobs run
    assert stack.api.json(f"/v1/jobs/{job_id}")["status"] == "succeeded"
    assert all_frames(stack.api, job_id) == frames_before
    again = stack.api.wait_finished(stack.api.upload(SHARED / "media" / "single_face.jpg"), 240, stack.compose.logs)
    assert again["status"] == "succeeded", again
