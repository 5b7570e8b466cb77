"""Tenants cannot point workers at the service's own network (http sources, webhooks) unless it is allowed."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fervid import media_store, netpolicy
from fervid.errors import MediaError
from fervid.media_store import local_copy
from fervid.netpolicy import non_public_address
from fervid.settings import get_settings
from tests.unit.test_media_store import CountingServer


@pytest.fixture
def strict(fervid_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    fervid_env.setenv("FERVID_ALLOW_PRIVATE_URLS", "false")
    get_settings.cache_clear()
    return fervid_env


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x", "http://10.1.2.3/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http:///nohost"])
def test_non_public_hosts_are_named(strict: pytest.MonkeyPatch, url: str) -> None:
    assert non_public_address(url, get_settings().allow_private_urls) is not None


def test_public_addresses_and_the_development_switch_pass(strict: pytest.MonkeyPatch) -> None:
    assert non_public_address("http://93.184.216.34/clip.mp4", get_settings().allow_private_urls) is None
    strict.setenv("FERVID_ALLOW_PRIVATE_URLS", "true")
    get_settings.cache_clear()
    assert non_public_address("http://127.0.0.1/clip.mp4", get_settings().allow_private_urls) is None


def test_a_loopback_source_is_refused_before_any_request(strict: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # given a server on loopback
    server = CountingServer(b"x" * 10)
    try:
        # when a job names it as its source
        source = f"{server.base}/clip.mp4"
        with pytest.raises(MediaError) as refused, local_copy(source, get_settings(), cache_key="job"):
            pass
        # then it is refused with its own code and the server never saw a request
        assert refused.value.code == "source_not_allowed" and server.hits[0] == 0
    finally:
        server.server.shutdown()


class RedirectingServer:
    """A real HTTP server on loopback that answers every GET with a 302 to `target`."""

    def __init__(self, target: str) -> None:
        hits = self.hits = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                hits[0] += 1
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def internal() -> Iterator[CountingServer]:
    running = CountingServer(b"secret" * 10)
    yield running
    running.server.shutdown()


def test_a_redirect_into_the_internal_network_is_refused(
    strict: pytest.MonkeyPatch, internal: CountingServer
) -> None:
    # given a server that redirects to an internal one; no public server exists here, so the test declares the
    # redirecting server's address public (only its port differs from the internal server's)
    redirector = RedirectingServer(f"{internal.base}/clip.mp4")
    strict.setattr(netpolicy, "is_public_peer", lambda peer: peer[1] == redirector.port)
    try:
        # when a download follows the redirect
        with pytest.raises(netpolicy.NonPublicAddress) as refused, \
                netpolicy.open_public(f"{redirector.base}/clip.mp4", timeout=5, allow_private=False):
            pass

        # then the first hop was made, the internal server never saw a request, and the error names the address
        assert redirector.hits[0] == 1 and internal.hits[0] == 0
        assert refused.value.address == "127.0.0.1"
    finally:
        redirector.server.shutdown()


def test_a_name_that_resolves_differently_at_connect_time_is_refused(
    strict: pytest.MonkeyPatch, internal: CountingServer
) -> None:
    # given a host whose check passed (as when DNS answers a public address first, then an internal one)
    strict.setattr(media_store, "non_public_address", lambda url, allow_private: None)

    # when a job's source connects to what turns out to be loopback
    with pytest.raises(MediaError) as refused, local_copy(f"{internal.base}/clip.mp4", get_settings(), cache_key="job"):
        pass

    # then the connection is dropped before any request, with the same code as the up-front check
    assert refused.value.code == "source_not_allowed" and internal.hits[0] == 0


def test_the_development_switch_lets_connections_reach_loopback(
    fervid_env: pytest.MonkeyPatch, internal: CountingServer
) -> None:
    # given FERVID_ALLOW_PRIVATE_URLS (the test environment's default)
    assert get_settings().allow_private_urls

    # when / then the same internal server is read
    with netpolicy.open_public(f"{internal.base}/clip.mp4", timeout=5, allow_private=True) as response:
        assert response.read() == b"secret" * 10
