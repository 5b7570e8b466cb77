from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fervid.errors import MediaError
from fervid.media_store import Downloads, local_copy
from fervid.settings import get_settings


class CountingServer:
    """A real HTTP server on loopback that serves one payload and counts the downloads."""

    def __init__(self, payload: bytes) -> None:
        hits = self.hits = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                if not self.path.endswith(".mp4"):
                    self.send_error(404)
                    return
                hits[0] += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


def downloads() -> Downloads:
    """The download cache and limits of the settings as the test set them."""
    return Downloads.from_settings(get_settings())


@pytest.fixture
def server() -> Iterator[CountingServer]:
    running = CountingServer(b"x" * 4096)
    yield running
    running.server.shutdown()


def test_a_job_downloads_its_media_once_per_machine(fervid_env: pytest.MonkeyPatch, server: CountingServer) -> None:
    # given a remote source
    uri = f"{server.base}/clip.mp4"
    # when segments of one job read it three times, and another job once
    for _ in range(3):
        with local_copy(uri, downloads(), cache_key="job-1", fence=None) as path:
            assert path.read_bytes() == b"x" * 4096
    with local_copy(uri, downloads(), cache_key="job-2", fence=None) as path:
        assert path.stat().st_size == 4096
    # then job-1 fetched it once, job-2 once more
    assert server.hits[0] == 2


def test_the_download_cache_keeps_within_its_budget(fervid_env: pytest.MonkeyPatch, server: CountingServer) -> None:
    # given a cache with room for about two downloads
    fervid_env.setenv("FERVID_DOWNLOAD_CACHE_MB", "0")
    get_settings.cache_clear()
    # when several jobs download
    for job in range(4):
        with local_copy(f"{server.base}/clip.mp4", downloads(), cache_key=f"job-{job}", fence=None) as path:
            assert path.exists()  # the file in use is never pruned
    # then only the most recent download is kept
    kept = [p for p in get_settings().download_cache_dir.iterdir() if p.suffix == ".mp4"]
    assert len(kept) == 1


def test_unreadable_sources_are_media_errors(fervid_env: pytest.MonkeyPatch, server: CountingServer,
                                             tmp_path: Path) -> None:
    for uri in (f"{server.base}/missing.txt", (tmp_path / "absent.mp4").as_uri(), "ftp://host/clip.mp4"):
        with pytest.raises(MediaError) as failed, local_copy(uri, downloads(), cache_key="job", fence=None):
            pass
        assert failed.value.code == "source_unavailable"


def test_an_unreachable_source_names_nothing_of_the_network(fervid_env: pytest.MonkeyPatch) -> None:
    # given a closed port and a port that greets with a banner (an SSH server on the internal network), both
    # reachable because private addresses are allowed here
    from tests.unit.test_netpolicy import ConnectionCounter

    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    banner = ConnectionCounter(banner=b"SSH-2.0-OpenSSH_9.6 db-7.internal\r\n")
    messages = []
    try:
        # when jobs name them as sources
        for port in (closed_port, banner.port):
            with pytest.raises(MediaError) as failed, local_copy(f"http://127.0.0.1:{port}/clip.mp4",
                                                                 downloads(), cache_key=f"job-{port}", fence=None):
                pass
            assert failed.value.code == "source_unavailable"
            messages.append(failed.value.message)
    finally:
        banner.close()
    # then both read the same text, which names no errno, banner, address or port
    assert messages[0] == messages[1]
    for leak in ("Errno", "Connection refused", "SSH", "db-7", "127.0.0.1", str(closed_port), str(banner.port)):
        assert leak not in messages[0]


class DrippingServer:
    """A real HTTP server on loopback that promises a body and sends it one byte every `interval_s`, for as long as
    the client stays; each byte comes well within any per-read timeout."""

    def __init__(self, interval_s: float) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                self.send_response(200)
                self.send_header("Content-Length", str(10 << 20))
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(interval_s)
                except OSError:
                    return

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.parametrize("cache_key", [None, "job-1"])
def test_a_dripping_source_fails_at_its_deadline(fervid_env: pytest.MonkeyPatch, cache_key: str | None) -> None:
    # given a source dripping a byte every 0.5 s and a 2 s download deadline
    fervid_env.setenv("FERVID_DOWNLOAD_DEADLINE_S", "2")
    get_settings.cache_clear()
    server = DrippingServer(0.5)
    started = time.monotonic()
    try:
        # when a worker fetches it, then it fails source_unavailable at the deadline, not when the source stops
        with pytest.raises(MediaError) as failed, local_copy(f"{server.base}/clip.mp4", downloads(),
                                                             cache_key=cache_key, fence=None):
            pass
    finally:
        server.server.shutdown()
        server.server.server_close()
    assert failed.value.code == "source_unavailable"
    assert "within 2 s" in failed.value.message
    assert time.monotonic() - started < 4.0


def test_a_full_disk_is_its_own_retriable_error_not_an_unreadable_source(
        fervid_env: pytest.MonkeyPatch, full_disk: Path) -> None:
    # given a download cache on a full disk and a source that answers
    from fervid.errors import DiskFull

    server = CountingServer(b"x" * (256 << 10))
    fervid_env.setenv("FERVID_DOWNLOAD_CACHE_DIR", str(full_disk))
    get_settings.cache_clear()
    # when a job's media is fetched
    with pytest.raises(DiskFull) as full, local_copy(f"{server.base}/clip.mp4", downloads(), cache_key="job-1",
                                                     fence=None):
        pass
    # then the error says the disk is full (a code workers retry), not that the source could not be read
    assert full.value.code == "disk_full" and server.hits == [1]
    assert [path.suffix for path in full_disk.iterdir()] == [".lock"]  # the partial download is gone
    server.server.shutdown()
