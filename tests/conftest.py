"""Fixtures shared by every test: ../shared, real databases, settings from the environment, tiny models."""

from __future__ import annotations

import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PG_ADMIN_URL = os.environ.get("FERVID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FERVID_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("FERVID_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "media").is_dir():
        pytest.skip(f"needs ../shared (real media and data), absent at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def yunet_path(shared_dir: Path) -> Path:
    return shared_dir / "models" / "face_detection_yunet_2023mar.onnx"


def _create_database() -> str:
    """A fresh PostgreSQL database, so parallel runs and leftovers never collide."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    name = f"fervid_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(host=admin.host, port=admin.port, user=admin.username, dbname=admin.database,
                             autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({error}); .ci/run starts it")
    return admin.set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin, name = make_url(PG_ADMIN_URL), make_url(url).database
    with psycopg.connect(host=admin.host, port=admin.port, user=admin.username, dbname=admin.database,
                         autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (no tables) for migration tests."""
    url = _create_database()
    yield url
    _drop_database(url)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database at Alembic head, shared by the session's tests."""
    from fervid.migrate import upgrade

    url = _create_database()
    upgrade(url)
    yield url
    from fervid.db import engine_for

    engine_for(url).dispose()
    _drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from fervid.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'fervid.db'}"
    upgrade(url)
    return url


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.ConnectionError as error:
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({error}); .ci/run starts it")
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """RabbitMQ, for the tests that show Celery's other common broker works too."""
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    except Exception as error:  # kombu raises its own and the transport's errors
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL} ({error})")
    return AMQP_URL


@pytest.fixture
def fervid_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """Isolated FERVID_* settings for one test; set more with monkeypatch.setenv, then call get_settings()."""
    from fervid.settings import get_settings

    monkeypatch.setenv("FERVID_DATABASE_URL", f"sqlite:///{tmp_path / 'fervid.db'}")
    monkeypatch.setenv("FERVID_STORAGE_URL", (tmp_path / "storage").as_uri())
    monkeypatch.setenv("FERVID_MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
    monkeypatch.setenv("FERVID_DETECTOR_URL", "")  # this machine has no internet: tests that download serve YuNet
    monkeypatch.setenv("FERVID_ENGINE_CACHE_DIR", str(tmp_path / "engine-cache"))
    monkeypatch.setenv("FERVID_DOWNLOAD_CACHE_DIR", str(tmp_path / "download-cache"))
    monkeypatch.setenv("FERVID_S3_SOURCE_PREFIXES", "s3://videos,s3://b")  # the buckets API tests name
    monkeypatch.setenv("FERVID_ALLOW_PRIVATE_URLS", "true")  # tests serve http on loopback; test_netpolicy unsets it
    monkeypatch.setenv("FERVID_ALLOW_WEAK_API_KEYS", "true")  # tests name their tenants' keys alice-key, ...
    # Every test shares the key alice-key and the client address: rate limits are off unless a test sets them.
    monkeypatch.setenv("FERVID_REQUESTS_PER_MINUTE", "1000000000")
    monkeypatch.setenv("FERVID_FAILED_AUTH_PER_MINUTE", "1000000000")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def build_tiny_classifier(path: Path, size: int = 16, channels: int = 1, output: str = "probs",
                          seed: int = 0) -> Path:
    """A real, tiny ONNX emotion classifier (flatten -> linear -> softmax) carrying fervid's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fervid.labels import EMOTIONS
    from models.spec import LABELS_KEY, NAME_KEY, OUTPUT_KEY, PREPROCESS_KEY, VERSION_KEY, Preprocess

    rng = np.random.default_rng(seed)
    features = channels * size * size
    weight = numpy_helper.from_array(rng.normal(0, 0.05, (features, len(EMOTIONS))).astype(np.float32), "weight")
    bias = numpy_helper.from_array(np.zeros(len(EMOTIONS), np.float32), "bias")
    nodes = [helper.make_node("Flatten", ["faces"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"])]
    out_name = "logits"
    if output == "probs":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out_name = "probs"
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("faces", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", len(EMOTIONS)])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    preprocess = Preprocess(size=(size, size), channels=channels, scale=1 / 255, mean=(0.5,), std=(0.25,))
    for key, value in {LABELS_KEY: ",".join(EMOTIONS), PREPROCESS_KEY: preprocess.to_json(), OUTPUT_KEY: output,
                       NAME_KEY: "tiny-test-classifier", VERSION_KEY: f"tiny-{seed}"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    return build_tiny_classifier(tmp_path / "tiny.onnx")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 64 KiB tmpfs, mounted for the test: writes past that fail with ENOSPC, as on a full disk."""
    import subprocess

    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


class FileServer:
    """Serves one file over HTTP on loopback, as a site's own mirror would (the host network reaches it too)."""

    def __init__(self, path: Path) -> None:
        payload = path.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{path.name}"
