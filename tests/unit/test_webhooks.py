"""Job-finished webhooks: a receiver that misbehaves never turns into an error in the worker."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fervid import webhooks
from fervid.db import session_scope
from fervid.migrate import upgrade
from fervid.settings import get_settings
from fervid.tables import Job, JobStatus


@pytest.fixture
def finished_job(fervid_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    upgrade(get_settings().database_url)
    with session_scope() as session:
        session.add(Job(id="job-1", tenant="alice", status=JobStatus.succeeded, source_uri="file:///x.mp4",
                        sample_fps=5.0, warnings=[], created_at=datetime.now(UTC)))
    fervid_env.setattr(webhooks.time, "sleep", lambda _: None)  # the retry pauses, not the requests
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
        delivered = webhooks.notify_finished(finished_job)
    finally:
        server.close()
    # then it reports no delivery instead of raising
    assert delivered is False


def test_a_url_urllib_cannot_send_to_is_a_failed_delivery(finished_job: str) -> None:
    # given a stored webhook URL with a port that is not a number (accepted before submissions checked it)
    _set_webhook(finished_job, "http://127.0.0.1:abc/hook")
    # when / then the job's webhook reports no delivery instead of raising
    assert webhooks.notify_finished(finished_job) is False
