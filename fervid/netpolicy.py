"""Where the service may connect on a tenant's behalf (http(s) sources, webhooks)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from fervid.settings import get_settings


def non_public_address(url: str) -> str | None:
    """The first non-public address (loopback, private, link-local, ...) the URL's host resolves to, if any.

    Tenants must not reach the service's own network through its workers, so such URLs are refused unless
    FERVID_ALLOW_PRIVATE_URLS is set (a single-tenant or development setup). A host that does not resolve is
    left to fail when it is used.
    """
    if get_settings().allow_private_urls:
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
