"""`fervid api`: the HTTP API under uvicorn, built by the `create_app` factory."""

from __future__ import annotations

import argparse

import uvicorn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    # Failed authentications are limited per client address: behind a reverse proxy on another host every client
    # would share the proxy's address (one guesser would lock everyone out) unless its X-Forwarded-For is trusted.
    parser.add_argument("--forwarded-allow-ips", default=None,
                        help="comma-separated addresses (or networks) of the reverse proxies whose X-Forwarded-For "
                             "names the client; default: $FORWARDED_ALLOW_IPS, else 127.0.0.1")


def run(args: argparse.Namespace) -> int:
    uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips)
    return 0
