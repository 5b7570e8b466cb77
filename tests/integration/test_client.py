"""The Python client (fervid.client) and `fervid submit` against a real `fervid api` and worker."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.media_factory import write_video
from fervid.client import ApiError, Client
from tests.integration.conftest import ServiceEnv, wait_for
from tests.integration.test_api import fervid_api_process
from tests.unit.test_annotate import decoded_frames

pytestmark = pytest.mark.integration


@pytest.fixture
def live_api(service_env: ServiceEnv, tmp_path: Path) -> Iterator[str]:
    """`fervid api` with a tenant of this test's own for alice-key: the session's database holds other tests' jobs."""
    keys = f"alice-{uuid.uuid4().hex[:8]}:alice-key"
    with fervid_api_process({**os.environ, **service_env.values, "FERVID_API_KEYS": keys},
                            tmp_path / "api.log") as base:
        yield base


def submit(base: str, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fervid.cli", "submit", *map(str, args), "--api", base],
                          env={**os.environ, "FERVID_API_KEY": "alice-key"}, capture_output=True, text=True,
                          timeout=timeout)


def job_count(client: Client) -> int:
    return len(client._json("GET", "/v1/jobs?limit=1000")["items"])


def test_the_client_submits_waits_and_reads_every_page_of_a_timeline(
        service_env: ServiceEnv, live_api: str, shared_dir: Path, tmp_path: Path) -> None:
    # given a client with alice's key, and a worker
    service_env.start_worker()
    client = Client(live_api, "alice-key")
    # when a clip is uploaded with a token, and again with the same token
    uploaded: list[tuple[int, int]] = []
    job = client.submit(shared_dir / "media" / "single_face.mp4", sample_fps=5, client_request_token="clip-1",
                        on_upload=lambda sent, size: uploaded.append((sent, size)))
    again = client.submit(shared_dir / "media" / "single_face.mp4", sample_fps=5, client_request_token="clip-1")
    # then one job, the upload reported to its end
    assert again.job_id == job.job_id and uploaded[-1][0] == uploaded[-1][1]
    done = client.wait(job, timeout_s=180)
    assert done.status == "succeeded" and done.frames_done == done.frames_total == 12
    # and the timeline comes whole across pages of 5, in order, as the CSV and summary agree
    frames = list(client.timeline(done, page_size=5))
    assert [frame["frame_index"] for frame in frames] == sorted({frame["frame_index"] for frame in frames})
    assert len(frames) == 12
    assert len(client.csv(done).decode().splitlines()) == 1 + sum(len(frame["faces"]) for frame in frames)
    assert client.summary(done)["tracks"]
    # and the annotated video is written whole once a worker rendered it
    video = client.annotated_video(done, tmp_path / "annotated.mp4", timeout_s=180)
    assert len(decoded_frames(video)) == len(decoded_frames(shared_dir / "media" / "single_face.mp4"))
    assert not (tmp_path / "annotated.mp4.part").exists()
    # and errors come back with the service's code; delete removes the job
    with pytest.raises(ApiError) as missing:
        client.job("00000000-0000-0000-0000-000000000000")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    client.delete(done)
    with pytest.raises(ApiError):
        client.job(done)
    with pytest.raises(ApiError) as refused:
        Client(live_api, "not-a-key").job(job)
    assert refused.value.status == 401


def test_the_client_retries_429_and_503_after_their_retry_after_and_gives_up_on_400() -> None:
    # given a server that answers 429 (Retry-After 1), then 503 (Retry-After 1), then the job
    answers = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"}), (200, {})]
    seen: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            seen.append(time.monotonic())
            status, headers = answers.pop(0) if answers else (400, {})
            body = json.dumps({"job_id": "j", "status": "queued", "progress": {"frames_done": 0}} if status == 200
                              else {"error": {"code": "rate_limited" if status == 429 else "x", "message": "m"}})
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", "key")
        # when a job is asked for
        job = client.job("j")
        # then it came on the third try, each a Retry-After later
        assert job.status == "queued" and len(seen) == 3
        assert all(later - earlier >= 0.9 for earlier, later in zip(seen, seen[1:], strict=False))
        # and a 400 is not retried
        with pytest.raises(ApiError) as refused:
            client.job("j")
        assert refused.value.status == 400 and len(seen) == 4
    finally:
        server.shutdown()


def test_fervid_submit_walks_a_folder_skips_what_is_not_media_waits_and_writes_every_result(
        service_env: ServiceEnv, live_api: str, shared_dir: Path, tmp_path: Path) -> None:
    # given a folder of clips (one in a subfolder, one named like another elsewhere), a still and two non-media files
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(shared_dir / "media" / "single_face.mp4", folder / "a.mp4")
    write_video(folder / "b.mp4", frame_count=24, fps=12)
    write_video(folder / "sub" / "a.mp4", frame_count=12, fps=12)
    shutil.copy(shared_dir / "media" / "single_face.jpg", folder / "photo.jpg")
    (folder / "notes.txt").write_text("not media")
    (folder / "page.jpg").write_text("<html><script>alert(1)</script></html>")
    service_env.start_worker()

    # when it is submitted and waited for
    run = submit(live_api, folder, "--wait", "--fps", "4", "--out", tmp_path / "out", "--format", "json")

    # then it exits 0, says what it skipped and why, and wrote each media file's timeline and summary
    assert run.returncode == 0, run.stderr
    assert "skipped" in run.stderr and "notes.txt" in run.stderr and "page.jpg" in run.stderr
    for name in ("a.mp4", "b.mp4", "sub/a.mp4", "photo.jpg"):
        frames = json.loads((tmp_path / "out" / f"{name}.timeline.json").read_text())
        assert frames and all("faces" in frame for frame in frames)
        assert "tracks" in json.loads((tmp_path / "out" / f"{name}.summary.json").read_text())
    client = Client(live_api, "alice-key")
    submitted = job_count(client)
    assert submitted == 4

    # when the same command runs again, then nothing is submitted twice
    assert submit(live_api, folder, "--fps", "4").returncode == 0
    assert job_count(client) == submitted


def test_fervid_submit_killed_halfway_and_run_again_submits_each_file_once_and_fails_for_a_failed_job(
        service_env: ServiceEnv, live_api: str, tmp_path: Path) -> None:
    # given 8 clips and a broken one (bytes that are no video), and no worker yet
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(8):
        write_video(folder / f"clip{n}.mp4", frame_count=12 + n, fps=12)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(2048))
    client = Client(live_api, "alice-key")
    env = {**os.environ, "FERVID_API_KEY": "alice-key"}

    # when `fervid submit` is killed once a few jobs exist
    process = subprocess.Popen([sys.executable, "-m", "fervid.cli", "submit", str(folder), "--api", live_api],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: job_count(client) >= 2 or process.poll() is not None, 60)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    # and run again to the end, waiting
    service_env.start_worker()
    run = submit(live_api, folder, "--wait", "--out", tmp_path / "out")

    # then every file has exactly one job
    jobs = client._json("GET", "/v1/jobs?limit=1000")["items"]
    assert sorted(job["filename"] for job in jobs) == sorted(path.name for path in folder.iterdir())
    # and the command failed, naming the broken file and why in one line
    assert run.returncode == 1
    failures = [line for line in run.stderr.splitlines() if line.startswith("failed ")]
    assert len(failures) == 1 and "broken.mp4" in failures[0], run.stderr
    assert len(list((tmp_path / "out").glob("*.timeline.csv"))) == 8
