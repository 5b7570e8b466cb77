"""Real worker processes for integration tests: `fervid worker` subprocesses on the real Redis and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import build_tiny_classifier

PROCESS_HOOKS = Path(__file__).resolve().parents[1] / "process_hooks"


@dataclass
class ServiceEnv:
    """The FERVID_* environment one test's API client and worker processes share."""

    values: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start_worker(self, concurrency: int = 1, extra: dict[str, str] | None = None,
                     prefix: tuple[str, ...] = (), queues: str | None = None,
                     crash_on: str = "", crash_once: bool = False) -> subprocess.Popen[bytes]:
        """`fervid worker`; `prefix` runs it under another command (e.g. `taskset -c 0`); `queues` is its --queues;
        `crash_on` "<stage>:<filename>" makes it die there (tests/process_hooks/sitecustomize.py), once per job with
        `crash_once`."""
        log_path = Path(self.values["FERVID_TEST_LOG_DIR"]) / f"worker-{len(self.workers)}.log"
        log = log_path.open("wb")
        python_path = os.pathsep.join(filter(None, [str(PROCESS_HOOKS), os.environ.get("PYTHONPATH", "")]))
        hooks = {"PYTHONPATH": python_path, "FERVID_TEST_CRASH_ON": crash_on,
                 "FERVID_TEST_CRASH_ONCE": "1" if crash_once else ""} if crash_on else {}
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "fervid.cli", "worker", "--concurrency", str(concurrency),
             "--loglevel", "INFO", *(("--queues", queues) if queues else ())],
            env={**os.environ, **self.values, **(extra or {}), **hooks}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a test can SIGKILL the worker and its children
        )
        self.workers.append(process)
        self.logs.append(log_path)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def worker_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in self.logs if path.exists())


@pytest.fixture
def service_env(pg_url: str, redis_url: str, yunet_path: Path, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceEnv]:
    """Settings for one test (its own queue, storage and tiny model), applied to this process as well."""
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    values = {
        "FERVID_DATABASE_URL": pg_url,
        "FERVID_BROKER_URL": redis_url,
        "FERVID_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
        "FERVID_STORAGE_URL": (tmp_path / "storage").as_uri(),
        "FERVID_API_KEYS": "alice:alice-key,bob:bob-key",
        "FERVID_ALLOW_WEAK_API_KEYS": "true",
        "FERVID_REQUESTS_PER_MINUTE": "1000000000",  # every test shares alice-key and the client address
        "FERVID_FAILED_AUTH_PER_MINUTE": "1000000000",
        "FERVID_DETECTOR_PATH": str(yunet_path),
        "FERVID_DETECTOR_URL": "",  # never the internet (none here); a test that downloads serves YuNet itself
        "FERVID_MODEL_PATH": str(build_tiny_classifier(tmp_path / "tiny.onnx", size=24)),
        "FERVID_MODEL_CACHE_DIR": str(tmp_path / "model-cache"),
        "FERVID_ENGINE_CACHE_DIR": str(tmp_path / "engine-cache"),
        "FERVID_DOWNLOAD_CACHE_DIR": str(tmp_path / "download-cache"),
        "FERVID_ALLOW_PRIVATE_URLS": "true",  # the webhook receiver listens on loopback
        "FERVID_REAPER_INTERVAL_S": "1",
        "FERVID_TEST_LOG_DIR": str(log_dir),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    celery_app.cache_clear()
    env = ServiceEnv(values)
    yield env
    for process in env.workers:
        env.kill_worker(process, signal.SIGTERM if process.poll() is None else signal.SIGKILL)
    get_settings.cache_clear()
    celery_app.cache_clear()


def wait_for(condition: Callable[[], object], timeout: float = 120.0, interval: float = 0.3,
             describe: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f} s. {describe()}")


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, fervid_env: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated database of this test's own, of each kind: the reaper and the dispatcher look at every job, so
    none may be left from others. (test_record_store's own `database`, the shared one, overrides it there.)"""
    from fervid.db import engine_for
    from fervid.migrate import upgrade
    from fervid.settings import get_settings

    if request.param == "postgresql":
        url = str(request.getfixturevalue("empty_pg_url"))
        upgrade(url)
    else:
        url = str(request.getfixturevalue("sqlite_url"))
    fervid_env.setenv("FERVID_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    engine_for(url).dispose()


@pytest.fixture
def queue(database: str, redis_url: str, fervid_env: pytest.MonkeyPatch) -> Iterator[str]:
    """A queue of this test's own on the real Redis (and `database`); the messages sent land in its list."""
    from fervid.queue import celery_app
    from fervid.settings import get_settings

    name = f"test-queue-{uuid.uuid4().hex[:8]}"
    fervid_env.setenv("FERVID_BROKER_URL", redis_url)
    fervid_env.setenv("FERVID_QUEUE", name)
    get_settings.cache_clear()
    celery_app.cache_clear()
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, *client.scan_iter(f"*{name}*"))  # the list and kombu's bindings for it
    celery_app.cache_clear()


def sent(redis_url: str, queue: str) -> list[tuple[str, list[Any]]]:
    """The (task name, args) of every message waiting in the queue's Redis list, oldest first."""
    messages = []
    for raw in reversed(redis.Redis.from_url(redis_url).lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args))
    return messages
