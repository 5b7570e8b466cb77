"""Job-finished webhooks: a receiver that misbehaves never turns into an error in the worker."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fervid import webhooks
from fervid.api_keys import WeakKeyError
from fervid.db import session_scope
from fervid.lifecycle import JobStatus
from fervid.migrate import upgrade
from fervid.settings import get_settings
from fervid.tables import Job
from tests.unit.test_netpolicy import ConnectionCounter, RedirectingServer

ROOT = Path(__file__).resolve().parents[2]


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


NEW_SECRET, OLD_SECRET = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


def readme_verify() -> Callable[[dict[str, bytes], str, bytes], bool]:
    """The receiver's `verify` exactly as README.md shows it, so the documented procedure is the one tested."""
    readme = (ROOT / "docs" / "api.md").read_text()
    (snippet,) = re.findall(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.DOTALL)
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102 - our own README
    return namespace["verify"]  # type: ignore[return-value]


def kids(signature: str) -> list[str]:
    return [part.removeprefix("kid=") for part in signature.split(",") if part.startswith("kid=")]


def test_a_rotating_service_signs_under_each_key_version_and_receivers_tell_forgeries(
        finished_job: str, fervid_env: pytest.MonkeyPatch) -> None:
    # given an operator rotating: the new secret v2 first, the old v1 still listed
    fervid_env.setenv("FERVID_WEBHOOK_SECRETS", f"v2:{NEW_SECRET},v1:{OLD_SECRET}")
    get_settings.cache_clear()
    # when alice's job's webhook is sent
    headers, body = deliver(finished_job)
    signature = headers[webhooks.SIGNATURE_HEADER]
    new = {"v2": webhooks.tenant_signing_key(NEW_SECRET, "alice")}
    old = {"v1": webhooks.tenant_signing_key(OLD_SECRET, "alice")}
    verify = readme_verify()
    # then it names v2 first, and a receiver holding either version verifies it by the README's procedure
    assert kids(signature) == ["v2", "v1"]
    assert verify(new, signature, body) and verify(old, signature, body)
    assert webhooks.verify(new, signature, body, time.time()) and webhooks.verify(old, signature, body, time.time())
    # and nothing else does: another tenant's keys, a key filed under the wrong kid, a changed body
    bob = {"v2": webhooks.tenant_signing_key(NEW_SECRET, "bob"), "v1": webhooks.tenant_signing_key(OLD_SECRET, "bob")}
    assert not verify(bob, signature, body)
    assert not verify({"v1": new["v2"]}, signature, body)
    assert not verify(new, signature, body.replace(b"succeeded", b"failed"))
    # nor a changed or second timestamp (a fresh t beside a replayed MAC), a garbled one, or a late replay
    stamp = signature.split(",")[0]
    assert not verify(new, signature.replace(stamp, f"t={int(stamp[2:]) + 1}"), body)
    assert not verify(new, f"{signature},t={int(time.time()) + 1}", body)
    assert not webhooks.verify(new, f"{signature},t={int(time.time()) + 1}", body, time.time())
    assert not verify(new, "t=abc,kid=v2,v1=00", body)
    assert not webhooks.verify(new, signature, body, time.time() + webhooks.SIGNATURE_TOLERANCE_S + 60)


def test_after_the_rotation_only_the_new_key_verifies(finished_job: str, fervid_env: pytest.MonkeyPatch) -> None:
    # given the old secret dropped at the end of a rotation
    fervid_env.setenv("FERVID_WEBHOOK_SECRETS", f"v2:{NEW_SECRET}")
    get_settings.cache_clear()
    # when the webhook is sent
    headers, body = deliver(finished_job)
    signature = headers[webhooks.SIGNATURE_HEADER]
    # then it carries v2 alone: the old key no longer verifies it
    assert kids(signature) == ["v2"]
    assert readme_verify()({"v2": webhooks.tenant_signing_key(NEW_SECRET, "alice")}, signature, body)
    assert not readme_verify()({"v1": webhooks.tenant_signing_key(OLD_SECRET, "alice")}, signature, body)


def test_the_single_secret_of_before_signs_as_v1_and_old_receivers_still_verify(
        finished_job: str, fervid_env: pytest.MonkeyPatch) -> None:
    # given the single-secret setting of earlier releases
    fervid_env.setenv("FERVID_WEBHOOK_SECRET", OLD_SECRET)
    get_settings.cache_clear()
    # when the webhook is sent
    headers, body = deliver(finished_job)
    signature = headers[webhooks.SIGNATURE_HEADER]
    key = webhooks.tenant_signing_key(OLD_SECRET, "alice")
    # then it is kid v1, and a receiver written to the earlier README (no kid: t and v1 read into a dict) verifies it
    assert kids(signature) == ["v1"] and readme_verify()({"v1": key}, signature, body)
    fields = dict(part.split("=", 1) for part in signature.split(","))
    expected = hmac.new(key, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)


@pytest.mark.parametrize("entries", ["v1:operator-secret", "v2:change-me", f"v2:{NEW_SECRET},v1:{'a' * 40}"])
def test_weak_webhook_secrets_are_refused(entries: str) -> None:
    with pytest.raises(WeakKeyError, match="FERVID_WEBHOOK_SECRETS: kid 'v[12]'.*secrets.token_urlsafe"):
        webhooks.parse_signing_secrets(entries)


@pytest.mark.parametrize(("entries", "legacy", "match"), [
    (f"v2:{NEW_SECRET}", OLD_SECRET, "both"),
    (f"v1:{NEW_SECRET},v1:{OLD_SECRET}", "", "twice"),
    (NEW_SECRET, "", "not kid:secret"),
    (f"v 2:{NEW_SECRET}", "", "not kid:secret"),
    ("v2:", "", "not kid:secret"),
])
def test_malformed_webhook_secrets_are_refused(entries: str, legacy: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        webhooks.parse_signing_secrets(entries, legacy)
    assert NEW_SECRET not in str(error.value) and OLD_SECRET not in str(error.value)  # no secret in the logs


def test_secrets_keep_their_order_and_the_single_one_is_v1() -> None:
    parsed = webhooks.parse_signing_secrets(f" v3:{NEW_SECRET}, 2024-a:{OLD_SECRET} ")
    assert [secret.kid for secret in parsed] == ["v3", "2024-a"]
    assert webhooks.parse_signing_secrets("", OLD_SECRET) == (webhooks.SigningSecret("v1", OLD_SECRET),)
    assert webhooks.parse_signing_secrets("", "") == ()
    assert OLD_SECRET not in repr(parsed)


def test_neither_the_api_nor_a_worker_starts_with_a_weak_webhook_secret(fervid_env: pytest.MonkeyPatch) -> None:
    from api.app import create_app
    from worker import serve

    # given a weak webhook secret
    fervid_env.setenv("FERVID_WEBHOOK_SECRET", "operator-secret")
    get_settings.cache_clear()
    # when / then the API's app factory and `fervid worker` refuse it before serving
    with pytest.raises(WeakKeyError, match="FERVID_WEBHOOK_SECRETS: kid 'v1'"):
        create_app()
    with pytest.raises(WeakKeyError, match="FERVID_WEBHOOK_SECRETS: kid 'v1'"):
        serve.run(argparse.Namespace(concurrency=1, queues=None, loglevel="INFO", name=None))


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
