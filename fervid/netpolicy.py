"""Where the service may connect on a tenant's behalf (http(s) sources, webhooks, the detector download).

Only http and https are spoken, redirects included (urllib's default opener would follow a redirect to ftp:// and
read file: and data: URLs). Each connection resolves its host once, checks every address it got, and connects to
those very addresses, with the name kept for the Host header and TLS's SNI: a DNS answer that changes between a
check and the connection (rebinding) never reaches the internal network, and nothing is sent to a refused peer.
`open_public` also takes a total deadline: socket timeouts bound one read, so a peer dripping a byte every few
seconds would otherwise hold the caller forever.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urljoin, urlparse

from fervid.stopping import StopSignal

ALLOWED_SCHEMES = frozenset({"http", "https"})
# Prefixes that carry an IPv4 address inside IPv6 and reach whatever it names through a gateway: `is_global` calls
# some of them public, yet NAT64 and 6to4 relays forward to the embedded (possibly private) IPv4 address.
TRANSLATED_NETWORKS = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # NAT64, local-use prefix
    ipaddress.IPv6Network("2002::/16"),  # 6to4
)


class RefusedDestination(Exception):
    """A URL or connection the service may not make for a tenant. Deliberately not an OSError: urllib would wrap
    that in URLError and callers would mistake it for a network failure worth retrying."""


class NonPublicAddress(RefusedDestination):
    """A host that resolves to a non-public address. The address stays in `address` for the log; the message a
    tenant may see names none."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__("the host does not resolve to a public address; set FERVID_ALLOW_PRIVATE_URLS=true where "
                         "workers may reach the private network")
        self.host = host
        self.address = address


class ForbiddenScheme(RefusedDestination):
    """A URL, or a redirect's target, that is not http(s)."""

    def __init__(self, scheme: str) -> None:
        super().__init__("only http:// and https:// URLs are followed, redirects included")
        self.scheme = scheme


class DeadlinePassed(TimeoutError):
    """The peer did not finish within the total deadline (it may have kept sending, slowly)."""


class _Deadline:
    """One request's total deadline over every connection it opens (redirects included): past it each socket is
    shut down, which wakes a read blocked in the caller's thread."""

    def __init__(self, deadline_at: float | None) -> None:
        self.deadline_at = deadline_at
        self.expired = False
        self._timers: list[threading.Timer] = []
        self._sockets: list[socket.socket] = []

    def arm(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        if self.deadline_at is None:
            return
        timer = threading.Timer(max(0.0, self.deadline_at - time.monotonic()), self._cut, [sock])
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def remaining_s(self) -> float | None:
        """Seconds left (at least 0), or None without a deadline."""
        return None if self.deadline_at is None else max(0.0, self.deadline_at - time.monotonic())

    def _cut(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        """Shuts every connection down now (the exchange was stopped), waking a read blocked on one."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def is_public_address(text: str) -> bool:
    """Whether an address (as getaddrinfo writes it, maybe with a %scope) is one tenants may reach."""
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            return address.ipv4_mapped.is_global
        if any(address in network for network in TRANSLATED_NETWORKS):
            return False
    return address.is_global


def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """getaddrinfo's TCP answers for (host, port): what a connection then uses, so nothing is resolved twice."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def non_public_address(url: str, allow_private: bool) -> str | None:
    """The first non-public address (loopback, private, link-local, NAT64, ...) the URL's host resolves to, if any.

    An early, friendly refusal at submission time; connections check again on their own resolution. Tenants must
    not reach the service's own network through its workers, so such URLs are refused unless `allow_private`
    (FERVID_ALLOW_PRIVATE_URLS: a single-tenant or development setup). A host that does not resolve is left to fail
    when it is used.
    """
    if allow_private:
        return None
    host = urlparse(url).hostname
    if not host:
        return "no host"
    try:
        infos = resolve(host, 0)
    except (socket.gaierror, UnicodeError):
        return None
    for info in infos:
        if not is_public_address(str(info[4][0])):
            return str(info[4][0])
    return None


def _connect_pinned(address: tuple[str, int], timeout: float | None, source_address: tuple[str, int] | None,
                    allow_private: bool, deadline: _Deadline) -> socket.socket:
    """socket.create_connection, except that the addresses connected to are the ones checked."""
    host, port = address
    infos = resolve(host, port)
    if not allow_private:
        for info in infos:
            if not is_public_address(str(info[4][0])):
                raise NonPublicAddress(host, str(info[4][0]))  # before any connection is attempted
    failure: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        # Connecting counts against the deadline too: a name with many dead addresses costs at most what is left.
        left = deadline.remaining_s()
        if left == 0.0:
            deadline.expired = True
            raise failure or TimeoutError(f"no connection to {host} within the deadline")
        sock = socket.socket(family, kind, proto)
        try:
            connect_timeout = min((t for t in (timeout, left) if t is not None), default=None)
            sock.settimeout(connect_timeout)
            if source_address is not None:
                sock.bind(source_address)
            sock.connect(sockaddr)
            sock.settimeout(timeout)  # each read's own bound; the deadline cuts the whole exchange
            deadline.arm(sock)
            return sock
        except OSError as error:
            sock.close()
            failure = error
    raise failure or OSError(f"{host} resolved to no address")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allow_private: bool, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # http.client connects through this hook (HTTPS too, before wrapping with SNI of the name)
        self._create_connection = functools.partial(_connect_pinned, allow_private=allow_private, deadline=deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, allow_private: bool, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_connect_pinned, allow_private=allow_private, deadline=deadline)


class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow_private: bool, deadline: _Deadline) -> None:
        super().__init__()
        self.allow_private, self.deadline = allow_private, deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_PinnedHTTPConnection, allow_private=self.allow_private,
                                              deadline=self.deadline), req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_private: bool, deadline: _Deadline) -> None:
        super().__init__()
        self.allow_private, self.deadline = allow_private, deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_PinnedHTTPSConnection, allow_private=self.allow_private,
                                              deadline=self.deadline), req,
                            context=self._context)  # type: ignore[attr-defined]


class _HttpOnlyRedirectHandler(urllib.request.HTTPRedirectHandler):
    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: http.client.HTTPMessage) -> http.client.HTTPResponse | None:
        # Checked before urllib's own list, which lets ftp:// through.
        location = headers.get("location") or headers.get("uri")
        scheme = urlparse(urljoin(req.full_url, location)).scheme.lower() if location else "http"
        if scheme not in ALLOWED_SCHEMES:
            fp.close()
            raise ForbiddenScheme(scheme)
        return super().http_error_302(req, fp, code, msg, headers)  # type: ignore[no-any-return]

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(allow_private: bool, deadline: _Deadline) -> urllib.request.OpenerDirector:
    # Built by hand: build_opener would add the ftp, file and data handlers.
    opener = urllib.request.OpenerDirector()
    # ProxyHandler({}): HTTP(S)_PROXY in the environment is ignored, so the peer checked is always the target itself
    # (behind a proxy, the checks would see only the proxy's address).
    for handler in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(),
                    _PinnedHTTPHandler(allow_private, deadline), _PinnedHTTPSHandler(allow_private, deadline),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


@contextlib.contextmanager
def open_public(request: str | urllib.request.Request, timeout: float, allow_private: bool,
                deadline_s: float | None = None, stop: StopSignal | None = None) -> Iterator[http.client.HTTPResponse]:
    """urllib's urlopen for http(s) only, redirects included (ForbiddenScheme otherwise), where every connection
    must reach a public address unless `allow_private` (FERVID_ALLOW_PRIVATE_URLS); NonPublicAddress otherwise.
    Proxy variables (HTTP_PROXY, HTTPS_PROXY, ...) are ignored: connections go to the target, whose address is what
    is checked.

    `timeout` bounds each read; `deadline_s` bounds the whole exchange, reading the response inside the block
    included: past it the connection is cut and DeadlinePassed raised. Once `stop` is set the connection is cut and
    Stopped raised."""
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    scheme = urlparse(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ForbiddenScheme(scheme)
    deadline = _Deadline(None if deadline_s is None else time.monotonic() + deadline_s)
    try:
        with (stop or StopSignal()).waking(deadline.cut_all), \
                _opener(allow_private, deadline).open(request, timeout=timeout) as response:
            yield response
    except (OSError, http.client.HTTPException, ValueError) as error:
        if deadline.expired:
            raise DeadlinePassed(f"no complete answer within {deadline_s:g} s") from error
        raise
    finally:
        deadline.cancel()
    if deadline.expired:  # the cut looked like the end of the body to the reader
        raise DeadlinePassed(f"no complete answer within {deadline_s:g} s")
