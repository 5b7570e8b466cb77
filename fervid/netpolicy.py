"""Where the service may connect on a tenant's behalf (http(s) sources, webhooks).

Two checks: `non_public_address` refuses a URL whose host resolves to a non-public address before anything is
sent, and `open_public` checks the address every connection actually reached (each redirect hop included), so
neither a redirect nor a DNS answer that changes between check and use (rebinding) reaches the internal network.
`open_public` also takes a total deadline: socket timeouts bound one read, so a peer dripping a byte every few
seconds would otherwise hold the caller forever.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse


def non_public_address(url: str, allow_private: bool) -> str | None:
    """The first non-public address (loopback, private, link-local, ...) the URL's host resolves to, if any.

    Tenants must not reach the service's own network through its workers, so such URLs are refused unless
    `allow_private` (FERVID_ALLOW_PRIVATE_URLS: a single-tenant or development setup). A host that does not resolve is
    left to fail when it is used.
    """
    if allow_private:
        return None
    host = urlparse(url).hostname
    if not host:
        return "no host"
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            return str(address)
    return None


class NonPublicAddress(Exception):
    """A connection reached a non-public address. Deliberately not an OSError: urllib would wrap that in URLError
    and callers would mistake it for a network failure worth retrying."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, not a public address; set FERVID_ALLOW_PRIVATE_URLS=true "
                         "where workers may reach the private network")
        self.host = host
        self.address = address


def is_public_peer(peer: tuple[Any, ...]) -> bool:
    """Whether a connected socket's peer (address, port, ...) is a public address."""
    return ipaddress.ip_address(str(peer[0]).split("%")[0]).is_global


class DeadlinePassed(TimeoutError):
    """The peer did not finish within the total deadline (it may have kept sending, slowly)."""


def _refuse_non_public_peer(connection: http.client.HTTPConnection) -> None:
    if connection.sock is None:
        return
    peer = connection.sock.getpeername()
    if not is_public_peer(peer):
        connection.close()  # before a single byte of the request is sent
        raise NonPublicAddress(connection.host, str(peer[0]))


class _Guard:
    """What every connection of one request must respect: public peers (unless allowed) and one deadline."""

    def __init__(self, allow_private: bool, deadline_at: float | None) -> None:
        self.allow_private = allow_private
        self.deadline_at = deadline_at
        self.expired = False
        self._timers: list[threading.Timer] = []

    def connected(self, connection: http.client.HTTPConnection) -> None:
        if not self.allow_private:
            _refuse_non_public_peer(connection)
        if self.deadline_at is not None and connection.sock is not None:
            timer = threading.Timer(max(0.0, self.deadline_at - time.monotonic()), self._cut, [connection.sock])
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _cut(self, sock: socket.socket) -> None:
        # Shutting the socket down wakes the blocked read in the caller's thread, which then fails.
        self.expired = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _guarded(base: type[http.client.HTTPConnection], guard: _Guard) -> type[http.client.HTTPConnection]:
    class Guarded(base):  # type: ignore[valid-type, misc]
        def connect(self) -> None:
            super().connect()
            guard.connected(self)

    return Guarded


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_guarded(http.client.HTTPConnection, self.guard), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_guarded(http.client.HTTPSConnection, self.guard), req,  # type: ignore[arg-type]
                            context=self._context)  # type: ignore[attr-defined]


@contextlib.contextmanager
def open_public(request: str | urllib.request.Request, timeout: float, allow_private: bool,
                deadline_s: float | None = None) -> Iterator[http.client.HTTPResponse]:
    """urllib's urlopen, except that every connection, redirects included, must reach a public address unless
    `allow_private` (FERVID_ALLOW_PRIVATE_URLS); raises NonPublicAddress otherwise. Behind an HTTP proxy the proxy
    is the peer, so a proxy on the private network needs FERVID_ALLOW_PRIVATE_URLS.

    `timeout` bounds each read; `deadline_s` bounds the whole exchange, reading the response inside the block
    included: past it the connection is cut and DeadlinePassed raised."""
    guard = _Guard(allow_private, None if deadline_s is None else time.monotonic() + deadline_s)
    opener = urllib.request.build_opener(_GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard))
    try:
        with opener.open(request, timeout=timeout) as response:
            yield response
    except (OSError, http.client.HTTPException, ValueError) as error:
        if guard.expired:
            raise DeadlinePassed(f"no complete answer within {deadline_s:g} s") from error
        raise
    finally:
        guard.cancel()
    if guard.expired:  # the cut looked like the end of the body to the reader
        raise DeadlinePassed(f"no complete answer within {deadline_s:g} s")
