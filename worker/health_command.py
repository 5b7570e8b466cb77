"""`fervid worker-health`: exits 0 when a worker process on this host can take jobs, for a container's health check.

A pool process publishes its status row (fervid.worker_status) only once it has loaded its models, and refreshes it
while it lives; so a fresh row of this host says more than a Celery ping, which the main process answers even when
no pool process could start (as when they all hung after the fork).
"""

from __future__ import annotations

import argparse
import socket
import sys
from datetime import timedelta

from fervid.db import session_scope
from fervid.settings import get_settings
from fervid.utc import utc_now
from fervid.worker_status import live_workers

MISSED_REFRESHES = 3  # a row this many refresh intervals old is a process that stopped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=socket.gethostname(), help="the worker host to check (default: this one)")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    seen_since = utc_now() - timedelta(seconds=MISSED_REFRESHES * settings.reaper_interval_s)
    with session_scope() as session:
        names = [worker.name for worker in live_workers(session, seen_since) if worker.name.startswith(f"{args.host}:")]
    if not names:
        print(f"no worker process on {args.host} has published its status since {seen_since:%H:%M:%S} UTC: none has "
              "loaded its models, or they stopped", file=sys.stderr)
        return 1
    print(f"{len(names)} worker process(es) on {args.host} ready: {', '.join(names)}")
    return 0
