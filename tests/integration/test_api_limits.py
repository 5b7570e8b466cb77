"""Rate limits and quotas on the real Redis and PostgreSQL: failed authentications per client address, requests
per key, queued and running jobs per tenant; each a 429 with Retry-After in the error envelope."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import ServiceEnv
from tests.integration.test_api import (
    ALICE,
    BOB,
    Api,
    assert_error,
    fervid_api_process,
    running_api,
    submit_uri,
    upload,
)
from tests.integration.test_end_to_end import submit_file, wait_finished

pytestmark = pytest.mark.integration


@pytest.fixture
def api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        for key in running.redis.scan_iter("fervid:limit:*"):  # the test client's address is shared by all tests
            running.redis.delete(key)
        yield running
        for key in running.redis.scan_iter("fervid:limit:*"):
            running.redis.delete(key)


def assert_too_many(response: httpx.Response, code: str) -> None:
    assert_error(response, 429, code)
    assert 0 < int(response.headers["Retry-After"]) <= 3600


def test_failed_authentications_are_limited_per_address_even_for_a_valid_key_afterwards(
        api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given at most 20 failed authentications a minute from one address
    fervid_env.setenv("FERVID_FAILED_AUTH_PER_MINUTE", "20")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    # when 30 wrong keys are tried
    statuses = [api.client.get("/v1/jobs", headers={"Authorization": f"Bearer guess-{n}"}).status_code
                for n in range(30)]
    # then the first 20 are 401 and the rest 429, and a right key from there is refused too until the window ends
    assert statuses == [401] * 20 + [429] * 10
    assert_too_many(api.client.get("/v1/jobs", headers={"Authorization": "Bearer guess"}), "rate_limited")
    assert_too_many(api.client.get("/v1/jobs", headers=ALICE), "rate_limited")


def statuses_until_refused(client: httpx.Client, url: str, forwarded_for: list[str]) -> list[int]:
    """Wrong keys sent as from each forwarded address in turn until one is refused with 429 (or they run out)."""
    statuses: list[int] = []
    for address in forwarded_for:
        statuses.append(client.get(url, headers={"Authorization": "Bearer guess",
                                                 "X-Forwarded-For": address}).status_code)
        if statuses[-1] == 429:
            break
    return statuses


def test_behind_a_trusted_proxy_failed_authentications_are_limited_per_forwarded_client(
        fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    # given `fervid api` (uvicorn) trusting the X-Forwarded-For of a proxy at 127.0.0.3, 3 failures a minute allowed
    env = {**os.environ, "FERVID_DATABASE_URL": pg_url, "FERVID_BROKER_URL": redis_url,
           "FERVID_API_KEYS": "carol:carol-key", "FERVID_FAILED_AUTH_PER_MINUTE": "3"}
    proxy = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10)
    untrusted = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"), timeout=10)
    guessers = [f"203.0.113.{n}" for n in range(1, 9)]
    try:
        with fervid_api_process(env, tmp_path / "api.log", "--forwarded-allow-ips", "127.0.0.3") as base:
            url = f"{base}/v1/jobs"
            # when one client behind the proxy guesses keys (8 tries cover a minute window turning over)
            guessed = statuses_until_refused(proxy, url, guessers[:1] * 8)
            # then it is refused, while another client behind the same proxy still gets in with its key
            other = proxy.get(url, headers={"Authorization": "Bearer carol-key", "X-Forwarded-For": "198.51.100.9"})
            # and a host that is not a trusted proxy cannot escape the limit by naming other clients
            spoofed = statuses_until_refused(untrusted, url, guessers)
        assert guessed[-1] == 429 and set(guessed[:-1]) == {401}, guessed
        assert other.status_code == 200, other.text
        assert spoofed[-1] == 429 and set(spoofed[:-1]) == {401}, spoofed
    finally:
        proxy.close()
        untrusted.close()
        connection = redis.Redis.from_url(redis_url)
        for key in connection.scan_iter("fervid:limit:*"):
            if any(address in key.decode() for address in ("203.0.113.", "198.51.100.9", "127.0.0.4")):
                connection.delete(key)


def test_requests_are_limited_per_key_and_other_keys_go_on(api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given 5 requests a minute per key
    fervid_env.setenv("FERVID_REQUESTS_PER_MINUTE", "5")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    # when alice sends 6
    statuses = [api.client.get("/v1/jobs", headers=ALICE).status_code for _ in range(6)]
    # then the 6th is refused, while bob's key still answers
    assert statuses == [200] * 5 + [429]
    assert_too_many(api.client.get("/v1/jobs", headers=ALICE), "rate_limited")
    assert api.client.get("/v1/jobs", headers=BOB).status_code == 200


def test_a_tenant_past_its_active_jobs_is_refused_until_one_ends(api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given at most 2 queued or running jobs per tenant
    fervid_env.setenv("FERVID_MAX_ACTIVE_JOBS", "2")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    first = submit_uri(api).json()["job_id"]
    assert submit_uri(api, client_request_token="t2").status_code == 202
    # when alice submits a third, by JSON and by upload
    refused = submit_uri(api)
    uploaded = api.client.post("/v1/jobs", headers=ALICE, files={"file": ("clip.mp4", b"data", "video/mp4")})
    # then both are 429 quota_exceeded and nothing is stored; a retried token and bob's backlog are not affected
    assert_too_many(refused, "quota_exceeded")
    assert_too_many(uploaded, "quota_exceeded")
    assert api.stored_files() == []
    assert submit_uri(api, client_request_token="t2").status_code == 200
    assert submit_uri(api, headers=BOB, max_duration_s=10).status_code == 202
    # and once one of alice's jobs ends she may submit again
    assert api.client.post(f"/v1/jobs/{first}/cancel", headers=ALICE).status_code == 200
    assert submit_uri(api).status_code == 202


def test_uploads_past_the_tenants_stored_bytes_are_refused(api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given at most 1 MB of uploads per tenant
    fervid_env.setenv("FERVID_MAX_STORED_MB", "1")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    half = b"x" * (600 << 10)
    first = api.client.post("/v1/jobs", headers=ALICE, files={"file": ("a.mp4", half, "video/mp4")})
    assert first.status_code == 202, first.text
    # when a second 600 KB upload would pass 1 MB
    second = api.client.post("/v1/jobs", headers=ALICE, files={"file": ("b.mp4", half, "video/mp4")})
    # then it is refused and not kept; bob's store is his own; deleting the first makes room again
    assert_too_many(second, "quota_exceeded")
    assert len(api.stored_files()) == 1
    assert api.client.post("/v1/jobs", headers=BOB, files={"file": ("b.mp4", half, "video/mp4")}).status_code == 202
    assert api.client.delete(f"/v1/jobs/{first.json()['job_id']}", headers=ALICE).status_code == 204
    assert api.client.post("/v1/jobs", headers=ALICE, files={"file": ("b.mp4", half, "video/mp4")}).status_code == 202


def test_a_tenant_past_its_frames_of_the_day_waits_until_the_oldest_job_is_a_day_old(
        api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given at most 1,000 sampled frames a day, and alice's job of 23 h ago that sampled 1,000
    from datetime import timedelta

    from sqlalchemy import update

    from fervid.db import session_scope
    from fervid.lifecycle import JobStatus
    from fervid.settings import get_settings
    from fervid.tables import Job
    from fervid.utc import utc_now

    fervid_env.setenv("FERVID_MAX_FRAMES_PER_DAY", "1000")
    get_settings.cache_clear()
    job_id = submit_uri(api, max_duration_s=10).json()["job_id"]
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            frames_total=1000, status=JobStatus.succeeded, created_at=utc_now() - timedelta(hours=23)))
    # when she submits again
    refused = submit_uri(api, max_duration_s=10)
    # then 429, to retry in about an hour; bob is not affected
    assert_error(refused, 429, "quota_exceeded")
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3700
    assert submit_uri(api, headers=BOB, max_duration_s=10).status_code == 202


def test_without_a_redis_for_counters_requests_are_not_limited(api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given a RabbitMQ broker and no FERVID_LIMITS_URL (nothing is connected to: the URL is only looked at)
    fervid_env.setenv("FERVID_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    fervid_env.setenv("FERVID_REQUESTS_PER_MINUTE", "1")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    # when / then the API answers (no rate limits) instead of failing every request
    assert [api.client.get("/v1/jobs", headers=ALICE).status_code for _ in range(3)] == [200] * 3


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_concurrent_submissions_never_pass_the_active_jobs_quota_together(
        kind: str, fervid_env: pytest.MonkeyPatch, redis_url: str, request: pytest.FixtureRequest) -> None:
    # given at most 3 queued or running jobs per tenant, on each database
    from sqlalchemy import func, select

    from fervid.db import session_scope
    from fervid.lifecycle import ACTIVE_JOB_STATUSES
    from fervid.tables import Job

    fervid_env.setenv("FERVID_MAX_ACTIVE_JOBS", "3")
    url = str(request.getfixturevalue("pg_url" if kind == "postgresql" else "sqlite_url"))
    with running_api(url, redis_url, fervid_env) as api:
        # when alice sends 16 submissions at the same moment
        statuses = submit_at_once(api, 16)
        # then exactly 3 were accepted and the rest refused, and she holds 3 active jobs
        assert sorted(statuses) == [202] * 3 + [429] * 13
        with session_scope() as session:
            active = session.scalar(select(func.count()).select_from(Job).where(
                Job.tenant == api.alice, Job.status.in_(ACTIVE_JOB_STATUSES)))
        assert active == 3


def submit_at_once(api: Api, submissions: int, **fields: Any) -> list[int]:
    """The status codes of `submissions` of alice's (with `fields`) sent at the same moment from as many threads."""
    barrier = threading.Barrier(submissions)
    statuses: list[int] = []

    def submit() -> None:
        barrier.wait(timeout=30)
        statuses.append(submit_uri(api, **fields).status_code)

    threads = [threading.Thread(target=submit) for _ in range(submissions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def test_a_burst_of_submissions_is_accepted_only_as_far_as_the_frames_it_reserves_fit_the_day(
        api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given at most 1,000 sampled frames a day
    fervid_env.setenv("FERVID_MAX_FRAMES_PER_DAY", "1000")
    from sqlalchemy import update

    from fervid.db import session_scope
    from fervid.settings import get_settings
    from fervid.tables import Job

    get_settings.cache_clear()
    # when a job of undeclared length is submitted (it may run FERVID_MAX_DURATION_S: 6 h at 5 fps)
    undeclared = submit_uri(api)
    # then it is refused, saying how to reserve less
    assert "max_duration_s" in assert_error(undeclared, 429, "quota_exceeded")["message"]

    # when alice sends 50 submissions at once, each of media at most 10 s long sampled at 5 fps (50 frames)
    statuses = submit_at_once(api, 50, max_duration_s=10)
    # then exactly the 20 that fit in the day were accepted
    assert sorted(statuses) == [202] * 20 + [429] * 30, statuses
    # and one more is refused, to retry soon: room comes back as the queued jobs are prepared
    refused = submit_uri(api, max_duration_s=10)
    assert_error(refused, 429, "quota_exceeded")
    assert int(refused.headers["Retry-After"]) <= 31

    # when a job is cancelled before it was prepared, its reservation is released: one more fits, not two
    queued = api.client.get("/v1/jobs", headers=ALICE).json()["items"]
    assert api.client.post(f"/v1/jobs/{queued[0]['job_id']}/cancel", headers=ALICE).status_code == 200
    assert [submit_uri(api, max_duration_s=10).status_code for _ in range(2)] == [202, 429]
    # and when a job is prepared, only the frames it samples count: 10 of its 50, so 40 more fit
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == queued[1]["job_id"]).values(frames_total=10))
    assert submit_uri(api, max_duration_s=8).status_code == 202
    assert submit_uri(api, max_duration_s=0.2).status_code == 429


def test_an_upload_past_the_quota_is_refused_before_its_body_is_received(
        fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    # given `fervid api` (uvicorn) allowing each tenant 1 MB of stored uploads
    storage = tmp_path / "storage"
    env = {**os.environ, "FERVID_DATABASE_URL": pg_url, "FERVID_BROKER_URL": redis_url,
           "FERVID_API_KEYS": "carol:carol-key", "FERVID_MAX_STORED_MB": "1", "FERVID_STORAGE_URL": storage.as_uri(),
           "FERVID_QUEUE": f"quota-{uuid.uuid4().hex[:8]}"}
    with fervid_api_process(env, tmp_path / "api.log") as base:
        # when an upload declaring 50 MB starts, and only its first 64 KB are sent
        host, _, port = base.removeprefix("http://").partition(":")
        boundary = "fervid-boundary"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
                "Content-Type: video/mp4\r\n\r\n").encode() + b"\x00" * (64 << 10)
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer carol-key\r\n"
                               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                               f"Content-Length: {50 << 20}\r\n\r\n".encode() + head)
            answer = read_answer(connection)
    # then it is refused at once, the rest never asked for, and nothing was stored
    assert answer.startswith("HTTP/1.1 429") and "quota_exceeded" in answer, answer[:500]
    assert not storage.exists() or not any(storage.rglob("*"))


def test_media_longer_than_its_reservation_takes_the_rest_of_the_day_at_prepare_or_fails_when_there_is_none(
        service_env: ServiceEnv, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given at most 20 sampled frames a day, for the API and the worker
    from fastapi.testclient import TestClient

    from api.app import create_app
    from fervid.settings import get_settings

    # a tenant of this test's own for alice-key: the session's database holds other tests' jobs of the day
    monkeypatch.setenv("FERVID_MAX_FRAMES_PER_DAY", "20")
    monkeypatch.setenv("FERVID_API_KEYS", f"quota-{uuid.uuid4().hex[:8]}:alice-key")
    get_settings.cache_clear()
    client = TestClient(create_app())
    service_env.start_worker(extra={"FERVID_MAX_FRAMES_PER_DAY": "20"})
    clip = shared_dir / "media" / "single_face.mp4"  # 2.4 s: 12 frames at 5 fps

    # when a job declared at most 1 s long (5 frames reserved) is prepared
    first = wait_finished(client, service_env, submit_file(client, clip, sample_fps=5, max_duration_s=1))
    # then it takes its 12 frames, as the day has room
    assert first["status"] == "succeeded" and first["progress"]["frames_done"] == 12, first

    # when a second one is accepted (12 + 5 reserved fit in 20) and prepared
    second = wait_finished(client, service_env, submit_file(client, clip, sample_fps=5, max_duration_s=1))
    # then it fails quota_exceeded, saying why, with nothing analysed: the day never passes 20 frames
    assert second["status"] == "failed" and second["error"]["code"] == "quota_exceeded", second
    assert "max_duration_s" in second["error"]["message"] and second["progress"]["frames_done"] == 0


def test_media_link_tokens_count_as_keys_do_failures_per_address_and_requests_per_key(
        api: Api, fervid_env: pytest.MonkeyPatch) -> None:
    # given a job of alice's with a media link, 3 failed authentications a minute allowed, 6 requests per key
    job_id = upload(api, b"\x00\x00\x00\x18ftypmp42" + bytes(64)).json()["job_id"]
    link = api.client.post(f"/v1/jobs/{job_id}/media-link", headers=ALICE).json()["url"]
    fervid_env.setenv("FERVID_FAILED_AUTH_PER_MINUTE", "3")
    fervid_env.setenv("FERVID_REQUESTS_PER_MINUTE", "6")
    from fervid.settings import get_settings

    get_settings.cache_clear()
    # when the link is used (the upload and the link took 2 of the key's 6 requests this minute)
    statuses = [api.client.get(link).status_code for _ in range(5)]
    # then it serves until the key's requests are spent, then 429 like the key itself
    assert statuses == [200] * 4 + [429], statuses
    assert_too_many(api.client.get("/v1/jobs", headers=ALICE), "rate_limited")

    # when tokens are guessed from one address
    for key in api.redis.scan_iter("fervid:limit:*"):
        api.redis.delete(key)
    guesses = [api.client.get(f"/v1/jobs/{job_id}/media?token=1999999999.{n:064x}").status_code for n in range(4)]
    # then each failure counts against it, and past the limit even the right link is refused
    assert guesses == [401, 401, 401, 429], guesses
    assert_too_many(api.client.get(link), "rate_limited")


def read_answer(connection: socket.socket) -> str:
    """An HTTP/1.1 answer's head and body (by its Content-Length), however the segments arrive."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536) or b"\r\n\r\n"
    head, _, body = received.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := connection.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")
