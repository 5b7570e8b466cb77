"""Job-finished webhooks: a receiver that misbehaves never turns into an error in the worker."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fervid import webhooks
from fervid.db import session_scope
from fervid.migrate import upgrade
from fervid.settings import get_settings
from fervid.tables import Job, JobStatus
from tests.unit.test_netpolicy import ConnectionCounter, RedirectingServer


@pytest.fixture
def finished_job(fervid_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    upgrade(get_settings().database_url)
    with session_scope() as session:
        session.add(Job(id="job-1", tenant="alice", status=JobStatus.succeeded, source_uri="file:///x.mp4",
                        sample_fps=5.0, warnings=[], created_at=datetime.now(UTC)))
    yield "job-1"


def _set_webhook(job_id: str, url: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.webhook_url = url


def test_a_receiver_that_answers_garbage_is_a_failed_delivery(finished_job: str) -> None:
    # given a receiver that answers every request with bytes that are not HTTP
    server = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"garbage\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    _set_webhook(finished_job, f"http://127.0.0.1:{server.getsockname()[1]}/hook")
    try:
        # when the job's webhook is sent
        delivered = webhooks.deliver(finished_job, "event-1", get_settings())
    finally:
        server.close()
    # then it reports no delivery instead of raising
    assert delivered is webhooks.Delivery.failed


def test_a_url_urllib_cannot_send_to_is_dropped(finished_job: str) -> None:
    # given a stored webhook URL with a port that is not a number (accepted before submissions checked it)
    _set_webhook(finished_job, "http://127.0.0.1:abc/hook")
    # when / then the job's webhook reports no delivery instead of raising
    assert webhooks.deliver(finished_job, "event-1", get_settings()) is webhooks.Delivery.dropped


class RecordingReceiver:
    """A loopback HTTP server that answers 204 and keeps each POST's headers and body."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def deliver(job_id: str) -> tuple[dict[str, str], bytes]:
    """Sends the job's webhook to a new recording receiver; the one request it got (headers, body)."""
    receiver = RecordingReceiver()
    _set_webhook(job_id, receiver.url)
    try:
        assert webhooks.deliver(job_id, "event-1", get_settings()) is webhooks.Delivery.delivered
    finally:
        receiver.close()
    ((headers, body),) = receiver.received
    return headers, body


def test_webhooks_are_signed_per_tenant_and_a_receiver_can_tell_forgeries(
        finished_job: str, fervid_env: pytest.MonkeyPatch) -> None:
    # given an operator secret
    fervid_env.setenv("FERVID_WEBHOOK_SECRET", "operator-secret")
    get_settings.cache_clear()
    # when alice's job's webhook is sent
    headers, body = deliver(finished_job)
    signature = headers[webhooks.SIGNATURE_HEADER]
    alice = webhooks.tenant_signing_key("operator-secret", "alice")
    now = time.time()
    # then alice's key verifies it, and nothing else does: another tenant's key, a changed body, a late replay
    assert webhooks.verify(alice, signature, body, now)
    assert not webhooks.verify(webhooks.tenant_signing_key("operator-secret", "bob"), signature, body, now)
    assert not webhooks.verify(alice, signature, body.replace(b"succeeded", b"failed"), now)
    assert not webhooks.verify(alice, signature, body, now + webhooks.SIGNATURE_TOLERANCE_S + 60)
    assert not webhooks.verify(alice, "t=abc,v1=00", body, now)


def test_webhooks_are_unsigned_without_a_secret(finished_job: str) -> None:
    # given no FERVID_WEBHOOK_SECRET, when the webhook is sent, then it carries no signature header
    headers, _ = deliver(finished_job)
    assert webhooks.SIGNATURE_HEADER not in headers


def test_a_webhook_redirected_to_ftp_reaches_nothing(finished_job: str) -> None:
    # given a webhook receiver that redirects the POST to ftp:// on an internal port
    listener = ConnectionCounter()
    redirector = RedirectingServer(f"ftp://127.0.0.1:{listener.port}/")
    _set_webhook(finished_job, f"{redirector.base}/hook")
    try:
        # when the job's webhook is sent
        delivered = webhooks.deliver(finished_job, "event-1", get_settings())
        # then it is dropped (never retried), and nothing reached the internal port
        assert delivered is webhooks.Delivery.dropped and redirector.hits[0] == 1 and listener.connections() == 0
    finally:
        redirector.server.shutdown()
        listener.close()


def test_each_event_carries_its_event_id(finished_job: str) -> None:
    # when the webhook is sent, then its body names the event, so a receiver can drop a repeated attempt
    _, body = deliver(finished_job)
    assert json.loads(body)["event_id"] == "event-1"


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_deadline(finished_job: str,
                                                                  fervid_env: pytest.MonkeyPatch) -> None:
    # given a receiver that answers one byte every 0.5 s (each read well within the per-read timeout), forever
    fervid_env.setenv("FERVID_WEBHOOK_TIMEOUT_S", "5")
    fervid_env.setenv("FERVID_WEBHOOK_DEADLINE_S", "1.5")
    get_settings.cache_clear()
    server = socket.create_server(("127.0.0.1", 0))

    def drip() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            try:
                for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                    connection.sendall(bytes([byte]))
                    time.sleep(0.5)
            except OSError:
                return

    threading.Thread(target=drip, daemon=True).start()
    _set_webhook(finished_job, f"http://127.0.0.1:{server.getsockname()[1]}/hook")
    # when the webhook is sent
    started = time.monotonic()
    try:
        delivered = webhooks.deliver(finished_job, "event-1", get_settings())
    finally:
        server.close()
    # then the attempt fails (to be retried) at its deadline, not when the receiver stops
    assert delivered is webhooks.Delivery.failed
    assert time.monotonic() - started < 3.0
