"""Where the service may connect on a tenant's behalf (http(s) sources, webhooks).

Two checks: `non_public_address` refuses a URL whose host resolves to a non-public address before anything is
sent, and `open_public` checks the address every connection actually reached (each redirect hop included), so
neither a redirect nor a DNS answer that changes between check and use (rebinding) reaches the internal network.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
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


def _refuse_non_public_peer(connection: http.client.HTTPConnection) -> None:
    if connection.sock is None:
        return
    peer = connection.sock.getpeername()
    if not is_public_peer(peer):
        connection.close()  # before a single byte of the request is sent
        raise NonPublicAddress(connection.host, str(peer[0]))


class _PublicHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_non_public_peer(self)


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_non_public_peer(self)


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_PublicHTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]


_public_opener = urllib.request.build_opener(_PublicHTTPHandler, _PublicHTTPSHandler)
_any_opener = urllib.request.build_opener()


def open_public(request: str | urllib.request.Request, timeout: float,
                allow_private: bool) -> http.client.HTTPResponse:
    """urllib's urlopen, except that every connection, redirects included, must reach a public address unless
    `allow_private` (FERVID_ALLOW_PRIVATE_URLS); raises NonPublicAddress otherwise. Behind an HTTP proxy the proxy
    is the peer, so a proxy on the private network needs FERVID_ALLOW_PRIVATE_URLS."""
    opener = _any_opener if allow_private else _public_opener
    return opener.open(request, timeout=timeout)  # type: ignore[no-any-return]
