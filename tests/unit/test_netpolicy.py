"""Tenants cannot point workers at the service's own network (http sources, webhooks) unless it is allowed."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fervid import netpolicy
from fervid.errors import MediaError
from fervid.media_store import Downloads, local_copy
from fervid.netpolicy import non_public_address
from fervid.settings import get_settings
from tests.unit.test_media_store import CountingServer


def downloads() -> Downloads:
    """The download cache and limits of the settings as the test set them."""
    return Downloads.from_settings(get_settings())


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
        with pytest.raises(MediaError) as refused, local_copy(source, downloads(), cache_key="job", fence=None):
            pass
        # then it is refused with its own code and the server never saw a request
        assert refused.value.code == "source_not_allowed" and server.hits[0] == 0
    finally:
        server.server.shutdown()


class RedirectingServer:
    """A real HTTP server on loopback (`host`, any 127/8 address) that answers every GET and POST with a 302 to
    `target`."""

    def __init__(self, target: str, host: str = "127.0.0.1") -> None:
        hits = self.hits = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                hits[0] += 1
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET  # noqa: N815 - the http.server hook name

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.base = f"http://{host}:{self.port}"


class ConnectionCounter:
    """A bare TCP listener on loopback that counts the connections that reach it (and may greet them with a
    banner, as an SSH or database server would), whatever protocol the client meant to speak."""

    def __init__(self, banner: bytes = b"") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.banner = banner
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with connection:
                if self.banner:
                    connection.sendall(self.banner)

    def connections(self) -> int:
        """The connections that arrived; waits a moment, so one made just before is counted."""
        time.sleep(0.2)
        return self.accepted

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def listener() -> Iterator[ConnectionCounter]:
    counter = ConnectionCounter()
    yield counter
    counter.close()


@pytest.fixture
def internal() -> Iterator[CountingServer]:
    running = CountingServer(b"secret" * 10)
    yield running
    running.server.shutdown()


def test_a_redirect_into_the_internal_network_is_refused(
    strict: pytest.MonkeyPatch, internal: CountingServer
) -> None:
    # given a server that redirects to an internal one; no public server exists here, so the test declares the
    # redirecting server's loopback address (127.0.0.2, beside the internal 127.0.0.1) public
    redirector = RedirectingServer(f"{internal.base}/clip.mp4", host="127.0.0.2")
    public = netpolicy.is_public_address
    strict.setattr(netpolicy, "is_public_address", lambda address: address == "127.0.0.2" or public(address))
    try:
        # when a download follows the redirect
        with pytest.raises(netpolicy.NonPublicAddress) as refused, \
                netpolicy.open_public(f"{redirector.base}/clip.mp4", timeout=5, allow_private=False):
            pass

        # then the first hop was made, the internal server never saw a request, and the address is kept for the
        # log but not written in the message
        assert redirector.hits[0] == 1 and internal.hits[0] == 0
        assert refused.value.address == "127.0.0.1" and "127.0.0.1" not in str(refused.value)
    finally:
        redirector.server.shutdown()


@pytest.mark.parametrize("scheme", ["ftp", "file", "data"])
def test_a_redirect_off_http_is_never_followed(fervid_env: pytest.MonkeyPatch, listener: ConnectionCounter,
                                              scheme: str) -> None:
    # given a source that redirects to ftp:// on an internal port, a local file, or inline data; private addresses
    # allowed (the development switch), so only the scheme can stop it
    target = {"ftp": f"ftp://127.0.0.1:{listener.port}/clip.mp4", "file": "file:///etc/hostname",
              "data": "data:video/mp4;base64,AAAA"}[scheme]
    redirector = RedirectingServer(target)
    try:
        # when a job reads it
        with pytest.raises(MediaError) as refused, local_copy(f"{redirector.base}/clip.mp4", downloads(),
                                                              cache_key="job", fence=None):
            pass
    finally:
        redirector.server.shutdown()
    # then it is refused as a place workers may not read, and nothing reached the internal port
    assert redirector.hits[0] == 1 and refused.value.code == "source_not_allowed"
    assert listener.connections() == 0


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "::1", "fc00::1", "fe80::1%eth0",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",  # IPv4-mapped: judged by the IPv4 address
    "64:ff9b::7f00:1", "64:ff9b::808:808", "64:ff9b:1::a00:1",  # NAT64 reaches whatever IPv4 it embeds
    "2002:7f00:1::1", "2002:808:808::1",  # 6to4 likewise
])
def test_non_public_addresses(address: str) -> None:
    assert not netpolicy.is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"])
def test_public_addresses(address: str) -> None:
    assert netpolicy.is_public_address(address)


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]"])
def test_translated_and_mapped_loopback_urls_are_refused_before_connecting(
    strict: pytest.MonkeyPatch, listener: ConnectionCounter, host: str
) -> None:
    with pytest.raises(netpolicy.NonPublicAddress), \
            netpolicy.open_public(f"http://{host}:{listener.port}/clip.mp4", timeout=5, allow_private=False):
        pass
    assert listener.connections() == 0


def test_dns_rebinding_reaches_nothing(strict: pytest.MonkeyPatch, listener: ConnectionCounter) -> None:
    # given a name whose resolver answers a public address first, then loopback (a rebinding attack; no DNS server
    # can be run here, so getaddrinfo is replaced for this one name, in this process)
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.216.34"])

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "media.rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]

    strict.setattr(socket, "getaddrinfo", rebinding)

    # when a job's source names it
    with pytest.raises(MediaError) as refused, local_copy(f"http://media.rebind.test:{listener.port}/clip.mp4",
                                                          downloads(), cache_key="job", fence=None):
        pass

    # then the check passed on the first answer, yet the connection, made to the addresses it checked itself, was
    # refused before it was made: no connection reached loopback
    assert refused.value.code == "source_not_allowed"
    assert listener.connections() == 0


def test_the_development_switch_lets_connections_reach_loopback(
    fervid_env: pytest.MonkeyPatch, internal: CountingServer
) -> None:
    # given FERVID_ALLOW_PRIVATE_URLS (the test environment's default)
    assert get_settings().allow_private_urls

    # when / then the same internal server is read
    with netpolicy.open_public(f"{internal.base}/clip.mp4", timeout=5, allow_private=True) as response:
        assert response.read() == b"secret" * 10


def test_proxy_variables_are_ignored_so_the_checked_peer_is_the_target(
    fervid_env: pytest.MonkeyPatch, internal: CountingServer, listener: ConnectionCounter
) -> None:
    # given a "proxy" named by every proxy variable (a bare listener that would see the request if one were sent)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        fervid_env.setenv(name, f"http://127.0.0.1:{listener.port}")
    fervid_env.delenv("NO_PROXY", raising=False)
    fervid_env.delenv("no_proxy", raising=False)

    # when a server is read
    with netpolicy.open_public(f"{internal.base}/clip.mp4", timeout=5, allow_private=True) as response:
        body = response.read()

    # then the connection went to the server itself, and none to the proxy
    assert body == b"secret" * 10
    assert listener.connections() == 0


def test_connecting_to_a_name_with_many_dead_addresses_stops_at_the_deadline(strict: pytest.MonkeyPatch) -> None:
    # given a name resolving to several addresses on this machine's network that nobody holds (each connect
    # attempt waits for an ARP answer that never comes; getaddrinfo is replaced for this one name)
    real_getaddrinfo = socket.getaddrinfo
    dead = [f"192.0.2.{last}" for last in range(200, 206)]

    def many_dead(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "media.dead.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 80)) for address in dead]

    strict.setattr(socket, "getaddrinfo", many_dead)
    strict.setattr(netpolicy, "is_public_address", lambda _: True)  # they stand for public addresses here

    # when it is read with a 30 s per-operation timeout and a 2 s deadline for the whole exchange
    started = time.monotonic()
    with pytest.raises((netpolicy.DeadlinePassed, OSError)), netpolicy.open_public(
            "http://media.dead.test/clip.mp4", timeout=30, allow_private=False, deadline_s=2):
        pass

    # then it gave up near the deadline, not after a connect attempt per address
    assert time.monotonic() - started < 5
