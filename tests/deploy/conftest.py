"""The deployment as users run it: the images built from the checkout as a clone has it, `docker compose` on them,
used only through the published port. Skipped, with the reason, where no Docker engine answers (on these machines
`../shared/docker/prepare-engine` starts one, which `.ci/run` calls).

Anything the tests need differently from a user's deployment goes in an override file written here, never in the
compose files: a published port of its own, build and run-time networks that reach this machine's test servers,
shorter reaper intervals, keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SHARED, FileServer

BUILD_TIMEOUT_S = 1800  # a first build downloads a few hundred MB of wheels
STANDIN_HINT = "run ../shared/docker/prepare-engine (as root) to start one"


def _docker_ready() -> str | None:
    """Why the compose tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return f"no docker command; {STANDIN_HINT}"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"no Docker engine answers ({info.stderr.strip()[-200:]}); {STANDIN_HINT}"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return f"no Compose v2 plugin; {STANDIN_HINT}"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> None:
    why = _docker_ready()
    if why is not None:
        pytest.skip(why)
    if not (SHARED / "models").is_dir():
        pytest.skip(f"needs ../shared (YuNet for the image build, real media), absent at {SHARED}")


@pytest.fixture(scope="session")
def clean_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a clone of this checkout has (tracked, and new files git does not ignore): no .venv, no runs."""
    target = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not in a new clone either
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@dataclass
class Compose:
    """One compose project over the checkout: its files (an override last) and the environment compose reads."""

    checkout: Path
    project: str
    files: list[str]
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.project, *(f for name in self.files for f in ("-f", name)), *args]
        done = subprocess.run(command, cwd=self.checkout, env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-3000:]}")
        return done

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.split()

    def health(self, container: str) -> str:
        return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container], capture_output=True,
                              text=True).stdout.strip()

    def logs(self, tail: int = 60) -> str:
        return self.run("logs", "--no-color", f"--tail={tail}", timeout=60, check=False).stdout[-8000:]

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=300, check=False)


@dataclass
class Api:
    """The API as a user reaches it: HTTP to the published port, with a bearer key."""

    base: str
    key: str

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {self.key}",
                                                  **({"Content-Type": content_type} if content_type else {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def json(self, path: str) -> Any:
        status, body, _ = self.request("GET", path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def upload(self, media: Path, **fields: str) -> str:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                 for name, value in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{media.name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + media.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, answer, _ = self.request("POST", "/v1/jobs", body, f"multipart/form-data; boundary={boundary}")
        assert status == 202, (status, answer[:500])
        return str(json.loads(answer)["job_id"])

    def wait_finished(self, job_id: str, timeout: float, describe: Callable[[], str] = lambda: "") -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            with contextlib.suppress(OSError):  # the API restarting with the stack
                job = self.json(f"/v1/jobs/{job_id}")
                return job if job["status"] in ("succeeded", "failed", "cancelled") else None
            return None

        return wait_until(finished, timeout, describe)  # type: ignore[return-value]


def wait_until(condition: Callable[[], object], timeout: float, describe: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, AssertionError):
            value = condition()
            if value:
                return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f} s. {describe()}")


def api_key() -> str:
    return f"alice:{secrets.token_urlsafe(32)}"


@pytest.fixture(scope="session")
def yunet_server(docker_engine: None) -> Iterator[FileServer]:
    """YuNet for the worker image's build, served here as a site without internet would serve it."""
    server = FileServer(SHARED / "models" / "face_detection_yunet_2023mar.onnx")  # reached over the host network
    yield server
    server.server.shutdown()


BUILD_OVERRIDE = """services:
  migrate: {build: {network: host}}
  api: {build: {network: host}}
  worker: {build: {network: host}}
"""


@pytest.fixture(scope="session")
def built_images(clean_checkout: Path, yunet_server: FileServer) -> Path:
    """The images of docker-compose.yml built from the clean checkout, YuNet fetched from `yunet_server`."""
    (clean_checkout / "build.override.yml").write_text(BUILD_OVERRIDE)
    compose = Compose(clean_checkout, "fervid-build", ["docker-compose.yml", "build.override.yml"],
                      {"FERVID_API_KEYS": api_key(),
                       "FERVID_DETECTOR_URL": yunet_server.url})
    compose.run("build", timeout=BUILD_TIMEOUT_S)
    return clean_checkout
