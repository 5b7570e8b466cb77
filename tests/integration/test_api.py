"""The HTTP API on the real PostgreSQL and Redis: auth, tenants, submission, job lifecycle, health, errors.

No worker runs here: an enqueued job is seen as the message in its Redis queue, and results are rows inserted
directly (tests/integration/test_api_results.py)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

pytestmark = pytest.mark.integration

ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}


@dataclass
class Api:
    client: TestClient
    queue: str
    redis: redis.Redis
    storage_root: Path
    alice: str  # tenant names, unique per test so the shared database never mixes tests' jobs
    bob: str

    def queued_job_ids(self) -> list[str]:
        """Job ids of the prepare messages waiting in the queue (Celery's Redis transport: one list per queue)."""
        ids = []
        for raw in self.redis.lrange(self.queue, 0, -1):
            message = json.loads(raw)
            assert message["headers"]["task"] == "fervid.prepare_job"
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            ids.append(args[0])
        return ids

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.storage_root.rglob("*") if p.is_file()) if self.storage_root.exists() else []


def make_client(**kwargs: Any) -> TestClient:
    from api.app import create_app

    return TestClient(create_app(), **kwargs)


@contextmanager
def running_api(database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The API on a real database and Redis, its own queue and two tenants (use with the fervid_env fixture)."""
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    suffix = uuid.uuid4().hex[:8]
    queue = f"api-test-{suffix}"
    monkeypatch.setenv("FERVID_DATABASE_URL", database_url)
    monkeypatch.setenv("FERVID_BROKER_URL", redis_url)
    monkeypatch.setenv("FERVID_QUEUE", queue)
    monkeypatch.setenv("FERVID_API_KEYS", f"alice-{suffix}:alice-key,bob-{suffix}:bob-key")
    get_settings.cache_clear()
    celery_app.cache_clear()
    storage_root = Path(unquote(urlparse(get_settings().storage_url).path))
    connection = redis.Redis.from_url(redis_url)
    try:
        yield Api(make_client(), queue, connection, storage_root, f"alice-{suffix}", f"bob-{suffix}")
    finally:
        connection.delete(queue)
        connection.close()
        celery_app.cache_clear()


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        yield running


def submit_uri(api: Api, headers: dict[str, str] = ALICE, **fields: Any) -> httpx.Response:
    body = {"source_uri": "s3://videos/clip.mp4", **fields}
    return api.client.post("/v1/jobs", headers=headers, json=body)


def upload(api: Api, content: bytes, name: str = "clip.mp4", headers: dict[str, str] = ALICE,
           **fields: Any) -> httpx.Response:
    return api.client.post("/v1/jobs", headers=headers, files={"file": (name, content, "video/mp4")},
                           data={key: str(value) for key, value in fields.items()})


def job_row(job_id: str) -> Any:
    from fervid.db import session_scope
    from fervid.tables import Job

    with session_scope() as session:
        return session.get(Job, job_id)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


def emotions_for(track_id: int, frame_index: int) -> dict[str, float]:
    """Deterministic probabilities (summing to 1) whose argmax moves with the track and the frame."""
    from fervid.labels import EMOTIONS

    raw = [1.0 + (track_id * 7 + frame_index + 3 * position) % 11 for position in range(len(EMOTIONS))]
    return {label: value / sum(raw) for label, value in zip(EMOTIONS, raw, strict=True)}


def insert_results(job_id: str, frames: int, tracks_at: Callable[[int], list[int]], stride: int = 5,
                   ms_per_index: float = 40.0) -> list[dict[str, Any]]:
    """Frames 0, stride, 2*stride, ... with a face for each track `tracks_at(k)` lists for the k-th frame, written
    as the worker writes them; returns the timeline items the API should answer with."""
    from sqlalchemy import insert

    from fervid.db import session_scope
    from fervid.quality import face_quality
    from fervid.results import dominant
    from fervid.tables import Face, Frame

    items, frame_rows, face_rows = [], [], []
    for k in range(frames):
        index, timestamp = k * stride, k * stride * ms_per_index
        frame_rows.append({"job_id": job_id, "frame_index": index, "timestamp_ms": timestamp, "segment_index": 0})
        faces = []
        for face_index, track_id in enumerate(tracks_at(k)):
            emotions = emotions_for(track_id, index)
            box = {"x": 10 * track_id + k % 7, "y": 20 + face_index, "w": 64 + track_id, "h": 70 + track_id}
            score = 0.5 + (k % 50) / 100
            # spread wide, so that some faces are not reliable whatever the thresholds
            measured = {"sharpness": 5.0 + (k * 37) % 600, "yaw": float((k * 13) % 121 - 60),
                        "roll": float((k * 7) % 61 - 30)}
            face_rows.append({"job_id": job_id, "frame_index": index, "face_index": face_index, "segment_index": 0,
                              "local_track": track_id, "track_id": track_id, **box, "score": score, **emotions,
                              **measured})
            quality = face_quality((box["x"], box["y"], box["w"], box["h"]), emotions, **measured)
            faces.append({"track_id": track_id, "box": box, "score": score, "emotions": emotions,
                          "dominant": dominant(emotions), "quality": quality.to_dict()})
        items.append({"frame_index": index, "timestamp_ms": timestamp, "faces": faces})
    with session_scope() as session:
        if frame_rows:
            session.execute(insert(Frame), frame_rows)
        if face_rows:
            session.execute(insert(Face), face_rows)
    return items


# --- authentication and tenants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Bearer "},
                                     {"Authorization": "Basic YWxpY2U6YWxpY2Uta2V5"}, {"Authorization": "alice-key"}])
def test_v1_routes_need_a_valid_bearer_key(api: Api, headers: dict[str, str]) -> None:
    # given a job that exists
    job_id = submit_uri(api).json()["job_id"]
    # when it is read without a valid key
    responses = [api.client.get(f"/v1/jobs/{job_id}", headers=headers), api.client.get("/v1/jobs", headers=headers),
                 api.client.post("/v1/jobs", headers=headers, json={"source_uri": "s3://b/k"})]
    # then every route answers 401 in the error envelope, and asks for a bearer token
    for response in responses:
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_tenant_never_sees_another_tenants_job(api: Api) -> None:
    # given alice's job with an uploaded file
    job_id = upload(api, b"\x00\x00\x00\x18ftypmp42 fake video bytes").json()["job_id"]
    # when bob tries every route on it
    routes = [("GET", ""), ("GET", "/timeline"), ("GET", "/timeline.csv"), ("GET", "/summary"), ("GET", "/plot.png"),
              ("POST", "/cancel"), ("DELETE", "")]
    answers = [api.client.request(method, f"/v1/jobs/{job_id}{path}", headers=BOB) for method, path in routes]
    # then each is a 404, exactly like a job that does not exist, and bob's list is empty
    missing = api.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=BOB)
    for response in [*answers, missing]:
        assert_error(response, 404, "not_found")
    assert api.client.get("/v1/jobs", headers=BOB).json()["items"] == []
    # and nothing bob did changed alice's job or its file
    assert api.client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["status"] == "queued"
    assert len(api.stored_files()) == 1


# --- submission -------------------------------------------------------------------------------------------------

def test_a_source_uri_job_is_committed_queued_and_enqueued(api: Api) -> None:
    # given / when
    response = submit_uri(api, sample_fps=2.5, webhook_url="https://hooks.example/done")
    # then a queued job comes back with the GET body
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["sample_fps"] == 2.5
    assert body["progress"] == {"frames_done": 0, "frames_total": None}
    assert body["media"] == dict.fromkeys(("kind", "duration_ms", "fps", "width", "height", "frame_count"))
    assert body["error"] is None and body["warnings"] == [] and body["started_at"] is None
    assert body["created_at"].endswith("Z")
    assert api.client.get(f"/v1/jobs/{body['job_id']}", headers=ALICE).json() == body
    # and its prepare message is in the Redis queue, sent after the row existed
    assert api.queued_job_ids() == [body["job_id"]]
    row = job_row(body["job_id"])
    assert row.tenant == api.alice and row.source_uri == "s3://videos/clip.mp4"
    assert row.webhook_url == "https://hooks.example/done" and row.enqueued_at is not None
    assert row.enqueued_at >= row.created_at


def test_an_upload_streams_to_storage_and_is_enqueued(api: Api, shared_dir: Path) -> None:
    # given a real clip
    clip = shared_dir / "media" / "single_face.mp4"
    # when it is uploaded with form fields
    response = upload(api, clip.read_bytes(), name="My Clip.MP4", sample_fps=10)
    # then the stored copy is byte-identical, the job points at it, and the job is enqueued
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["sample_fps"] == 10 and body["filename"] == "My Clip.MP4"
    (stored,) = api.stored_files()
    assert stored.read_bytes() == clip.read_bytes() and stored.name == "media"  # no suffix: told by content
    row = job_row(body["job_id"])
    assert row.source_uri == stored.as_uri() and row.stored_media_key.startswith(body["job_id"])
    assert api.queued_job_ids() == [body["job_id"]]


def test_the_same_token_gets_the_same_job_back(api: Api) -> None:
    # given a job submitted with a client_request_token
    first = submit_uri(api, client_request_token="clip-1")
    # when the same tenant submits again with the token, by JSON and by upload
    again = submit_uri(api, client_request_token="clip-1", sample_fps=9)
    uploaded = upload(api, b"some video bytes", client_request_token="clip-1")
    # then it is the same job, not re-enqueued and no upload stored for it
    assert first.status_code == 202 and again.status_code == 200 and uploaded.status_code == 200
    assert first.json()["job_id"] == again.json()["job_id"] == uploaded.json()["job_id"]
    assert again.json()["sample_fps"] == 5.0
    assert api.queued_job_ids() == [first.json()["job_id"]]
    assert api.stored_files() == []
    # and another tenant's identical token is a different job
    bobs = submit_uri(api, headers=BOB, client_request_token="clip-1")
    assert bobs.status_code == 202 and bobs.json()["job_id"] != first.json()["job_id"]


def test_a_token_race_is_decided_by_the_unique_constraint(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a job with a token, and a second request that passed its existence check before the first committed
    # (the check is made to miss once, which is what a race looks like; the constraint is the real PostgreSQL one)
    from fervid import jobs
    from fervid.db import session_scope
    from fervid.tables import Job

    first = submit_uri(api, client_request_token="race").json()["job_id"]
    real_lookup, calls = jobs.job_by_token, []

    def lookup_missing_once(*args: Any) -> Any:
        calls.append(args)
        return None if len(calls) == 1 else real_lookup(*args)

    monkeypatch.setattr(jobs, "job_by_token", lookup_missing_once)
    # when the second insert hits the unique constraint
    with session_scope() as session:
        job, created = jobs.create_job(session, tenant=api.alice, queue="cpu", source_uri="s3://b/k", sample_fps=5,
                                       tasks_per_tenant=16, frames_reserved=10, client_request_token="race")
        # then it answers with the first job and leaves exactly one row
        assert (job.id, created) == (first, False)
        count = session.scalar(select(func.count()).select_from(Job).where(Job.client_request_token == "race",
                                                                          Job.tenant == api.alice))
    assert count == 1 and len(calls) == 2
    assert api.queued_job_ids() == [first]


def test_an_upload_over_the_declared_limit_is_refused_and_nothing_is_stored(
    api: Api, fervid_env: pytest.MonkeyPatch
) -> None:
    # given a 1 MB limit
    fervid_env.setenv("FERVID_MAX_UPLOAD_MB", "1")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    # when 2 MB are uploaded (Content-Length declares it)
    response = upload(api, os.urandom(2 << 20))
    # then 413, no file, no job, no message
    assert_error(response, 413, "payload_too_large")
    assert api.stored_files() == [] and api.queued_job_ids() == []
    assert api.client.get("/v1/jobs", headers=ALICE).json()["items"] == []


def test_a_chunked_upload_is_counted_while_it_arrives(api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given a 1 MB limit and multipart bodies sent without Content-Length (chunked transfer encoding)
    fervid_env.setenv("FERVID_MAX_UPLOAD_MB", "1")
    from fervid.settings import get_settings

    get_settings.cache_clear()

    def chunked(payload: bytes) -> httpx.Response:
        boundary = "fervid-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
                f"Content-Type: video/mp4\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        pieces = (body[start : start + 65536] for start in range(0, len(body), 65536))
        return api.client.post("/v1/jobs", headers={**ALICE, "Content-Type": f"multipart/form-data; boundary="
                                                    f"{boundary}"}, content=pieces)

    # when one is 3 MB and one is just over 1 MB (within the form overhead, so only the file count catches it)
    too_big, barely_over = chunked(os.urandom(3 << 20)), chunked(os.urandom((1 << 20) + 1))
    fits = chunked(os.urandom(1 << 20))
    # then both oversize uploads get 413 with nothing stored, and one at the limit is accepted
    assert_error(too_big, 413, "payload_too_large")
    assert_error(barely_over, 413, "payload_too_large")
    assert fits.status_code == 202, fits.text
    (stored,) = api.stored_files()
    assert stored.stat().st_size == 1 << 20 and api.queued_job_ids() == [fits.json()["job_id"]]


def test_an_empty_upload_is_refused_as_empty_media(api: Api) -> None:
    # given / when
    response = upload(api, b"")
    # then
    assert_error(response, 422, "empty_media")
    assert api.stored_files() == [] and api.queued_job_ids() == []


@pytest.mark.parametrize("fps", [0, -2, 120.01, 1000, "fast", None])
def test_bad_sample_fps_is_a_422_in_the_error_envelope(api: Api, fps: Any) -> None:
    # given / when a JSON and an upload submission with it
    as_json = submit_uri(api, sample_fps=fps)
    as_form = upload(api, b"bytes", sample_fps="" if fps is None else fps)
    # then JSON is refused (null is not a rate); the form treats an empty field as the default
    error = assert_error(as_json, 422, "invalid_request")
    assert "sample_fps" in error["message"]
    if fps is None:
        assert as_form.status_code == 202 and as_form.json()["sample_fps"] == 5.0
    else:
        assert "sample_fps" in assert_error(as_form, 422, "invalid_request")["message"]
        assert api.stored_files() == []


@pytest.mark.parametrize("body", [{"source_uri": "ftp://host/clip.mp4"}, {"source_uri": "/etc/passwd"}, {},
                                  {"source_uri": "s3://b/k", "webhook_url": "gopher://x"}, ["s3://b/k"],
                                  {"source_uri": "s3://b/k", "unknown": 1}])
def test_a_bad_json_submission_is_refused(api: Api, body: Any) -> None:
    # given / when
    response = api.client.post("/v1/jobs", headers=ALICE, json=body)
    # then
    assert_error(response, 422, "invalid_request")
    assert api.queued_job_ids() == []


def test_malformed_bodies_get_the_error_envelope(api: Api) -> None:
    # given / when: invalid JSON, a form without a file, and an unsupported content type
    bad_json = api.client.post("/v1/jobs", headers={**ALICE, "Content-Type": "application/json"}, content=b"{nope")
    no_file = api.client.post("/v1/jobs", headers=ALICE, files={"other": ("x.txt", b"x")}, data={"sample_fps": "2"})
    as_text = api.client.post("/v1/jobs", headers={**ALICE, "Content-Type": "text/plain"}, content=b"s3://b/k")
    # then
    assert_error(bad_json, 400, "bad_request")
    assert_error(no_file, 422, "invalid_request")
    assert_error(as_text, 415, "unsupported_media_type")
    assert api.stored_files() == []


def test_a_broker_outage_at_submit_still_answers_202_and_leaves_the_job_for_the_reaper(
    api: Api, fervid_env: pytest.MonkeyPatch
) -> None:
    # given a broker URL nothing listens on
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    fervid_env.setenv("FERVID_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    get_settings.cache_clear()
    celery_app.cache_clear()
    # when a job is submitted
    response = submit_uri(api)
    # then it is accepted and waits, queued with enqueued_at NULL, for the next dispatch (the reaper's at the latest)
    assert response.status_code == 202, response.text
    row = job_row(response.json()["job_id"])
    assert row.status == "queued" and row.enqueued_at is None


# --- lifecycle --------------------------------------------------------------------------------------------------

def add_segments(job_id: str, statuses: list[str]) -> None:
    from fervid.db import session_scope
    from fervid.tables import Segment

    with session_scope() as session:
        session.add_all(Segment(job_id=job_id, index=index, start_ms=index * 1000.0, end_ms=(index + 1) * 1000.0,
                                plan=[], status=status, attempts=0, frames_done=5 if status == "done" else 0,
                                warnings=[]) for index, status in enumerate(statuses))


def segment_statuses(job_id: str) -> list[str]:
    from fervid.db import session_scope
    from fervid.tables import Segment

    with session_scope() as session:
        return list(session.scalars(select(Segment.status).where(Segment.job_id == job_id)
                                    .order_by(Segment.index)))


def test_cancel_stops_a_running_job_and_its_pending_segments(api: Api) -> None:
    # given a running job with one segment done, one running and two pending
    from fervid.db import session_scope
    from fervid.tables import Job

    job_id = submit_uri(api).json()["job_id"]
    with session_scope() as session:
        session.get(Job, job_id).status = "running"  # type: ignore[union-attr]
    add_segments(job_id, ["done", "running", "pending", "pending"])
    # when it is cancelled
    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
    # then it is cancelled and finished; pending segments are cancelled, the others are left to the worker
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    assert response.json()["progress"]["frames_done"] == 5
    assert segment_statuses(job_id) == ["done", "running", "cancelled", "cancelled"]
    # and cancelling a finished job is a conflict
    assert_error(api.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE), 409, "conflict")


def test_a_succeeded_job_cannot_be_cancelled(api: Api) -> None:
    # given a job that succeeded
    from fervid.db import session_scope
    from fervid.tables import Job

    job_id = submit_uri(api).json()["job_id"]
    with session_scope() as session:
        session.get(Job, job_id).status = "succeeded"  # type: ignore[union-attr]
    # when / then
    error = assert_error(api.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE), 409, "conflict")
    assert "succeeded" in error["message"]
    assert api.client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["status"] == "succeeded"


def test_delete_removes_every_row_and_the_stored_file(api: Api) -> None:
    # given an uploaded job with segments, frames, faces and tracks
    from fervid.db import session_scope
    from fervid.tables import Face, Frame, Job, Segment, Track

    job_id = upload(api, b"video bytes").json()["job_id"]
    add_segments(job_id, ["done"])
    insert_results(job_id, frames=5, tracks_at=lambda k: [1, 2])
    with session_scope() as session:
        session.add(Track(job_id=job_id, track_id=1, first_ms=0, last_ms=400, frames=5))
    other = upload(api, b"other video").json()["job_id"]
    assert len(api.stored_files()) == 2
    # when it is deleted
    response = api.client.delete(f"/v1/jobs/{job_id}", headers=ALICE)
    # then 204, every row of it is gone (cascade), its file is gone, and the other job is untouched
    assert response.status_code == 204 and response.content == b""
    with session_scope() as session:
        for table in (Job, Segment, Frame, Face, Track):
            key = table.id if table is Job else table.job_id
            assert session.scalar(select(func.count()).select_from(table).where(key == job_id)) == 0, table
    (remaining,) = api.stored_files()
    assert remaining.read_bytes() == b"other video"
    assert_error(api.client.get(f"/v1/jobs/{job_id}", headers=ALICE), 404, "not_found")
    assert api.client.get(f"/v1/jobs/{other}", headers=ALICE).status_code == 200


def test_the_job_list_is_the_tenants_own_newest_first_in_pages(api: Api) -> None:
    # given five jobs of alice (one cancelled) and one of bob
    ids = [submit_uri(api).json()["job_id"] for _ in range(5)]
    api.client.post(f"/v1/jobs/{ids[1]}/cancel", headers=ALICE)
    submit_uri(api, headers=BOB)
    # when alice walks the list two at a time
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/jobs", headers=ALICE, params=params).json()
        seen += [item["job_id"] for item in page["items"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not cursor:
            break
    # then she sees exactly her jobs, newest first, in three pages
    assert seen == ids[::-1] and pages == 3
    # and the status filter narrows it
    cancelled = api.client.get("/v1/jobs", headers=ALICE, params={"status": "cancelled"}).json()
    assert [item["job_id"] for item in cancelled["items"]] == [ids[1]]
    assert_error(api.client.get("/v1/jobs", headers=ALICE, params={"status": "lost"}), 422, "invalid_request")
    assert_error(api.client.get("/v1/jobs", headers=ALICE, params={"cursor": "garbage"}), 422, "invalid_request")


# --- health, errors, docs, the command ---------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the probe closes: nothing listens there


def test_healthz_and_readyz_answer_when_everything_is_up(api: Api) -> None:
    # given / when
    health, ready = api.client.get("/healthz"), api.client.get("/readyz")
    # then
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["checks"]) == ("ok", {"database": "ok", "broker": "ok"})
    assert isinstance(body["workers"], list) and isinstance(body["warnings"], list)  # detail: what workers run


@pytest.mark.parametrize("down", ["broker", "database"])
def test_readyz_names_what_is_down(api: Api, fervid_env: pytest.MonkeyPatch, down: str) -> None:
    # given the broker or the database pointed at a port nothing listens on
    from fervid.settings import get_settings

    port = closed_port()
    if down == "broker":
        fervid_env.setenv("FERVID_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    else:
        fervid_env.setenv("FERVID_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
    get_settings.cache_clear()
    # when
    ready, health = api.client.get("/readyz"), api.client.get("/healthz")
    # then readiness is 503 naming the one that failed; liveness is unaffected
    error = assert_error(ready, 503, "not_ready")
    assert error["message"].startswith(f"{down}:")
    checks = ready.json()["checks"]
    assert checks[down] != "ok" and [name for name, state in checks.items() if state == "ok"] != [down]
    assert str(port) not in ready.text  # where the services live is not told to callers without a key
    assert health.status_code == 200


def test_unknown_routes_wrong_methods_and_bad_parameters_get_the_envelope(api: Api) -> None:
    # given / when / then
    assert_error(api.client.get("/v2/jobs"), 404, "not_found")
    assert_error(api.client.put("/v1/jobs", headers=ALICE), 405, "method_not_allowed")
    job_id = submit_uri(api).json()["job_id"]
    too_many = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE, params={"limit": 1001})
    assert "limit" in assert_error(too_many, 422, "invalid_request")["message"]


def test_an_unexpected_failure_is_a_500_envelope_not_a_traceback(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a route whose code fails in a way no handler turns into a FervidError (a bug)
    def broken(*_: Any) -> None:
        raise RuntimeError("psycopg said something internal")

    monkeypatch.setattr("fervid.jobs.get_job", broken)
    client = make_client(raise_server_exceptions=False)
    # when
    response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=ALICE)
    # then
    error = assert_error(response, 500, "internal_error")
    assert "Traceback" not in response.text and "psycopg" not in error["message"]


def test_a_database_that_does_not_answer_is_a_503_with_retry_after(api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given a database that is down, as while it restarts (connections refused)
    from fervid.settings import get_settings

    fervid_env.setenv("FERVID_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test")
    get_settings.cache_clear()
    client = make_client(raise_server_exceptions=False)
    # when
    response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=ALICE)
    # then the answer says to retry soon, with a code of its own, and nothing of the driver's
    error = assert_error(response, 503, "database_unavailable")
    assert int(response.headers["Retry-After"]) > 0 and "psycopg" not in error["message"]


def test_the_openapi_document_describes_every_route(api: Api) -> None:
    # given / when
    schema = api.client.get("/openapi.json").json()
    docs = api.client.get("/docs")
    # then every operation has a summary, /v1 ones declare the bearer scheme, and /docs serves
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    operations = [(path, op) for path, item in schema["paths"].items() for op in item.values()]
    assert len(operations) == 17  # 14 job and health routes (annotated.mp4 too), the media, media-link and still
    assert all(op.get("summary") for _, op in operations)
    assert all(op.get("security") for path, op in operations if path.startswith("/v1"))
    submit = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(submit) == {"multipart/form-data", "application/json"}


@contextmanager
def fervid_api_process(env: dict[str, str], log_path: Path, *args: str) -> Iterator[str]:
    """`fervid api` started as a real process (uvicorn) on a free loopback port, with `args`; yields its base URL
    once it answers, and stops it after."""
    port = closed_port()
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "fervid.cli", "api", "--port", str(port), *args], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_fervid_api_serves_over_http(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str,
                                     tmp_path: Path) -> None:
    # given `fervid api` started as a real process on a free port
    env = {**os.environ, "FERVID_DATABASE_URL": pg_url, "FERVID_BROKER_URL": redis_url,
           "FERVID_QUEUE": f"api-test-{uuid.uuid4().hex[:8]}", "FERVID_API_KEYS": "carol:carol-key",
           "FERVID_STORAGE_URL": (tmp_path / "storage").as_uri()}
    try:
        with fervid_api_process(env, tmp_path / "api.log") as base:
            health = httpx.get(f"{base}/healthz", timeout=2)
            # when a file is uploaded over real HTTP
            response = httpx.post(f"{base}/v1/jobs", headers={"Authorization": "Bearer carol-key"},
                                  files={"file": ("c.mp4", b"x" * 4 * 65536)}, timeout=30)
        # then it serves, stores the upload, and answers 202
        assert health.json() == {"status": "ok"}
        assert response.status_code == 202, response.text
        stored = [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]
        assert [p.stat().st_size for p in stored] == [4 * 65536]
    finally:
        redis.Redis.from_url(redis_url).delete(env["FERVID_QUEUE"])


def test_each_tenant_reads_its_own_webhook_keys_of_every_version(
        fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> None:
    from fervid.webhooks import SIGNATURE_HEADER, tenant_signing_key

    # given an operator rotating webhook secrets: v2 signs, v1 still listed
    new, old = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    fervid_env.setenv("FERVID_WEBHOOK_SECRETS", f"v2:{new},v1:{old}")
    with running_api(pg_url, redis_url, fervid_env) as api:
        # when each tenant asks for its keys
        alice = api.client.get("/v1/webhook-signing-key", headers=ALICE)
        bob = api.client.get("/v1/webhook-signing-key", headers=BOB)
    # then each gets the keys its webhooks are signed with, the signing one first, and they differ
    assert alice.status_code == bob.status_code == 200
    assert alice.json()["header"] == SIGNATURE_HEADER
    alice_keys = [{"kid": "v2", "key": tenant_signing_key(new, api.alice).hex()},
                  {"kid": "v1", "key": tenant_signing_key(old, api.alice).hex()}]
    assert alice.json()["keys"] == alice_keys
    assert (alice.json()["kid"], alice.json()["key"]) == ("v2", alice_keys[0]["key"])
    assert bob.json()["keys"] == [{"kid": "v2", "key": tenant_signing_key(new, api.bob).hex()},
                                  {"kid": "v1", "key": tenant_signing_key(old, api.bob).hex()}]
    assert not {key["key"] for key in alice_keys} & {key["key"] for key in bob.json()["keys"]}


def test_without_a_secret_there_is_no_signing_key(api: Api) -> None:
    # when / then: webhooks are unsigned, and the API says so
    assert_error(api.client.get("/v1/webhook-signing-key", headers=ALICE), 404, "not_configured")


def test_metrics_count_jobs_and_queued_messages_for_the_operator_only(
        fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> None:
    # given a metrics token and two jobs waiting in the queue (no worker runs in this test)
    fervid_env.setenv("FERVID_METRICS_TOKEN", "scraper-token")
    with running_api(pg_url, redis_url, fervid_env) as api:
        before = api.client.get("/metrics", headers={"Authorization": "Bearer scraper-token"})
        for _ in range(2):
            assert submit_uri(api).status_code == 202
        # when the scraper reads the metrics, and others try
        after = api.client.get("/metrics", headers={"Authorization": "Bearer scraper-token"})
        tenant = api.client.get("/metrics", headers=ALICE)
        anonymous = api.client.get("/metrics")
    # then it sees two more queued jobs, their two messages in the test's queue (sent, not waiting), a queued age
    assert before.status_code == after.status_code == 200, after.text
    assert after.headers["content-type"].startswith("text/plain")

    def samples(body: str) -> dict[str, float]:
        return {name: float(value) for name, value in
                (line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))}

    queued = 'fervid_jobs{status="queued"}'
    assert samples(after.text)[queued] == samples(before.text)[queued] + 2
    assert samples(after.text)[f'fervid_queue_messages{{queue="{api.queue}"}}'] == 2
    assert samples(after.text)["fervid_oldest_queued_job_age_seconds"] >= 0
    assert samples(after.text)["fervid_waiting_tasks"] == samples(before.text)["fervid_waiting_tasks"]
    # and an API key or no token is refused
    assert_error(tenant, 401, "unauthorized")
    assert_error(anonymous, 401, "unauthorized")


def test_metrics_are_off_without_a_token(api: Api) -> None:
    assert_error(api.client.get("/metrics", headers=ALICE), 404, "not_configured")
