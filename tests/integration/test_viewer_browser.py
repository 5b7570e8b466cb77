"""The viewer page in a real browser (Debian's chromium, driven by playwright) on the real API and a real worker."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fervid.labels import EMOTIONS
from tests.integration.conftest import ServiceEnv, wait_for
from tests.unit.test_annotate import decoded_frames

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ALICE = {"Authorization": "Bearer alice-key"}
JOB_TIMEOUT_MS = 180_000


@pytest.fixture
def live_api(service_env: ServiceEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API under uvicorn on a free loopback port, in this process (the browser needs a real server), with
    tenants of its own: the session's database holds other tests' jobs for alice and bob."""
    import uvicorn

    from api.app import create_app
    from fervid.settings import get_settings

    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("FERVID_API_KEYS", f"alice-{suffix}:alice-key,bob-{suffix}:bob-key")
    get_settings.cache_clear()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


def console_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def sign_in(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#sign-in-form button[type=submit]")


def timeline(base: str, job_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/v1/jobs/{job_id}/timeline", params={"limit": 1000}, headers=ALICE)
    assert response.status_code == 200 and response.json()["next_cursor"] is None
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def drawn(page: Any) -> tuple[float, list[dict[str, Any]]]:
    canvas = page.locator("#overlay")
    return float(canvas.get_attribute("data-time-ms")), json.loads(canvas.get_attribute("data-boxes"))


def boxes_at(items: list[dict[str, Any]], timestamp_ms: float) -> list[dict[str, Any]]:
    (item,) = [item for item in items if item["timestamp_ms"] == timestamp_ms]
    return [{"track_id": face["track_id"], **face["box"]} for face in item["faces"]]


def test_a_tenant_follows_an_upload_and_reads_its_faces_in_sync_and_another_sees_none_of_it(
    service_env: ServiceEnv, live_api: str, browser: Any, shared_dir: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service_env.start_worker()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = console_errors(page)
    page.goto(live_api)

    # given a wrong key, then alice's
    sign_in(page, "not-a-key")
    expect(page.locator("#sign-in-error")).to_have_text("That API key is not valid.")
    errors.clear()  # chromium logs the 401 of that sign-in as a failed resource load
    sign_in(page, "alice-key")
    expect(page.locator("#jobs-state")).to_contain_text("No jobs yet")
    assert page.evaluate("sessionStorage.getItem('fervid.apiKey')") == "alice-key"
    assert page.evaluate("document.cookie") == ""

    # when she uploads a clip at 5 fps
    page.set_input_files("#submit-file", str(shared_dir / "media" / "single_face.mp4"))
    page.fill("#submit-fps", "5")
    page.click("#submit-button")

    # then it is listed at once, and its progress bar fills as the worker goes, up to succeeded
    row = page.locator("li.job").first
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    progress = row.locator("progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "12"
    expect(row.locator(".found")).to_contain_text("1 track · 12 faces")
    job_id = row.get_attribute("data-job-id")

    # when she opens the job
    row.locator(".name a").click()
    expect(page.locator("#job-body")).to_be_visible()
    expect(page.locator("#job-view .disclaimer")).to_contain_text(
        "expressions as they appear on faces, not the feelings of the people")
    items = timeline(live_api, job_id)
    tracks = sorted({face["track_id"] for item in items for face in item["faces"]})

    # then there is one chart per track with one path per emotion, in the palette's order
    charts = page.locator(".track svg.chart")
    expect(charts).to_have_count(len(tracks))
    for index in range(len(tracks)):
        emotions = charts.nth(index).locator("path").evaluate_all("paths => paths.map(p => p.dataset.emotion)")
        assert emotions == list(EMOTIONS)
    expect(page.locator("#overall")).to_contain_text("time visible")
    overlay = page.locator("#overlay")
    expect(overlay).not_to_have_attribute("data-time-ms", "-1")

    # when she clicks the chart at 60 % of its width
    chart = charts.first
    bounds = chart.bounding_box()
    chart.click(position={"x": bounds["width"] * 0.6, "y": bounds["height"] / 2})
    expect(overlay).not_to_have_attribute("data-time-ms", "0")
    # then the overlay draws exactly the boxes the timeline has at the sample nearest that time
    time_ms, boxes = drawn(page)
    duration_ms = max(items[-1]["timestamp_ms"] + 200.0, 2400.0)
    assert abs(time_ms - 0.6 * duration_ms) <= 100.0 + duration_ms / bounds["width"]
    assert boxes and boxes == boxes_at(items, time_ms)
    cursor_x = float(chart.locator(".cursor").get_attribute("x1"))
    assert abs(cursor_x - 600) < 60

    # when she steps to the next sampled frame with the keyboard
    page.locator("#job-title").click()
    page.keyboard.press("ArrowRight")
    expect(overlay).not_to_have_attribute("data-time-ms", f"{time_ms:g}")
    stepped_ms, stepped_boxes = drawn(page)
    # then the overlay moved one sample on, with that sample's boxes
    assert stepped_ms == items[[item["timestamp_ms"] for item in items].index(time_ms) + 1]["timestamp_ms"]
    assert stepped_boxes == boxes_at(items, stepped_ms)
    page.locator("#smoothing").check()  # smoothing redraws the charts without an error
    expect(charts.first.locator("path")).to_have_count(len(EMOTIONS))

    # when she downloads the annotated video, then a worker renders it and the page saves it under the clip's name
    with page.expect_download(timeout=JOB_TIMEOUT_MS) as download:
        page.click("#download-annotated")
    assert download.value.suggested_filename == "single_face-annotated.mp4"
    download.value.save_as(tmp_path / "annotated.mp4")
    assert len(decoded_frames(tmp_path / "annotated.mp4")) == len(decoded_frames(shared_dir / "media" /
                                                                                  "single_face.mp4"))
    expect(page.locator("#download-annotated")).to_have_text("Annotated video")
    page.screenshot(path=str(tmp_path / "job-1280x800.png"), full_page=True)
    mode = "video" if page.locator("#video").is_visible() else "frame stills"

    # and on a phone-sized screen nothing is wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "job-390.png"), full_page=True)
    assert errors == [], (mode, errors)

    # when she uploads a photo and opens it
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(live_api)
    page.set_input_files("#submit-file", str(shared_dir / "media" / "astronaut.png"))
    page.click("#submit-button")
    photo = page.locator("li.job", has_text="astronaut.png")
    expect(photo).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    photo_id = photo.get_attribute("data-job-id")
    photo.locator(".name a").click()
    # then it shows with its boxes and one bar of the 7 emotions per face
    (item,) = timeline(live_api, photo_id)
    expect(page.locator("#faces .face")).to_have_count(len(item["faces"]))
    expect(page.locator("#faces .face").first.locator(".bars span")).to_have_count(len(EMOTIONS))
    expect(page.locator("#download-annotated")).to_be_hidden()  # a photo has no video to annotate
    expect(overlay).to_have_attribute("data-time-ms", "0")
    assert drawn(page)[1] == boxes_at([item], 0.0)
    assert errors == [], errors

    # when bob signs in on another tab
    other = browser.new_page(viewport={"width": 1280, "height": 800})
    other_errors = console_errors(other)
    other.goto(live_api)
    sign_in(other, "bob-key")
    # then he sees none of alice's jobs, and her job is not found for him
    expect(other.locator("#jobs-state")).to_contain_text("No jobs yet")
    expect(other.locator("li.job")).to_have_count(0)
    other.goto(f"{live_api}/#/jobs/{job_id}")
    expect(other.locator("#job-state")).to_have_text("No such job for this key.")
    expect(other.locator("#job-body")).to_be_hidden()
    assert all("404" in error for error in other_errors), other_errors


def test_media_the_browser_cannot_play_is_shown_as_stills_a_worker_renders_with_their_boxes(
    service_env: ServiceEnv, live_api: str, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from bench.media_factory import HEIGHT, WIDTH, write_video

    # given an MJPEG AVI (no browser plays it), analysed by a real worker
    clip = write_video(tmp_path / "clip.avi", frame_count=48, fps=24, codec="mjpeg", pix_fmt="yuvj420p")
    service_env.start_worker()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = console_errors(page)
    page.goto(live_api)
    sign_in(page, "alice-key")
    page.set_input_files("#submit-file", str(clip))
    page.click("#submit-button")
    row = page.locator("li.job", has_text="clip.avi")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    job_id = row.get_attribute("data-job-id")

    # when she opens it
    row.locator(".name a").click()

    # then the page says it shows the sampled frames, and shows the first one once a worker rendered it (the API
    # answers 202 until then), at the frame's size, with that frame's boxes drawn
    expect(page.locator("#mode-note")).to_contain_text("sampled frames", timeout=30_000)
    still = page.locator("#still")
    expect(still).to_have_attribute("src", re.compile("^blob:"), timeout=60_000)
    wait_for(lambda: page.evaluate("document.getElementById('still').naturalWidth") > 0, 30)
    assert page.evaluate("[document.getElementById('still').naturalWidth, "
                         "document.getElementById('still').naturalHeight]") == [WIDTH, HEIGHT]
    items = timeline(live_api, str(job_id))
    expect(page.locator("#overlay")).to_have_attribute("data-time-ms", f"{items[0]['timestamp_ms']:g}")
    assert drawn(page)[1] == boxes_at(items, items[0]["timestamp_ms"])
    # and nothing failed on the way (the 202s it waited through are not failures)
    assert errors == [], errors


def test_a_preparing_job_can_be_cancelled_and_is_followed_until_it_ends(
    service_env: ServiceEnv, live_api: str, browser: Any, shared_dir: Path
) -> None:
    from playwright.sync_api import expect
    from sqlalchemy import update

    from fervid.db import session_scope
    from fervid.lifecycle import JobStatus
    from fervid.tables import Job

    # given alice's job, which a worker is preparing (set so here: no worker runs in this test)
    with (shared_dir / "media" / "single_face.jpg").open("rb") as stream:
        submitted = httpx.post(f"{live_api}/v1/jobs", headers=ALICE, files={"file": ("photo.jpg", stream)})
    job_id = submitted.json()["job_id"]
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.preparing))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(live_api)
    sign_in(page, "alice-key")
    # then its row offers Cancel, as for any job still under way
    row = page.locator(f"li.job[data-job-id='{job_id}']")
    expect(row).to_have_attribute("data-status", "preparing")
    # and its page says so and keeps following it: cancelled from the row, the page shows the end
    page.goto(f"{live_api}/#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_contain_text("This job is preparing")
    page.goto(live_api)
    row.locator("button", has_text="Cancel").click()
    expect(row).to_have_attribute("data-status", "cancelled", timeout=30_000)
    expect(row.locator("button", has_text="Cancel")).to_have_count(0)
