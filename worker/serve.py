"""`fervid worker`: a Celery worker consuming the configured queue(s)."""

from __future__ import annotations

import argparse
import os

from fervid.queue import webhook_queue
from fervid.settings import get_settings
from fervid.webhooks import signing_secrets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes (one per core is typical)")
    parser.add_argument("--queues", default=None,
                        help="comma list (default: FERVID_QUEUE and its webhooks, i.e. cpu,cpu.webhooks)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--name", default=None, help="Celery node name (default fervid-<queue>@<host>-<pid>)")


def run(args: argparse.Namespace) -> int:
    # loading these pulls in the ML runtime
    from worker.pipeline import usable_cores
    from worker.tasks import WorkerLayout, app, configure_worker

    # The usable cores are split between the worker processes so inference threads do not fight each other;
    # the children are forked from this process, so they inherit these settings.
    layout = WorkerLayout.split(get_settings(), usable_cores(), args.concurrency)
    signing_secrets(layout.settings)  # a weak or malformed webhook secret stops the worker here, before it serves
    configure_worker(layout)
    queues = args.queues or f"{layout.settings.queue},{webhook_queue(layout.settings.queue)}"
    name = args.name or f"fervid-{layout.settings.queue}@%h-{os.getpid()}"
    app.worker_main(["worker", f"--concurrency={args.concurrency}", f"--queues={queues}", f"--loglevel={args.loglevel}",
                     f"--hostname={name}", "--pool=prefork", "--without-gossip", "--without-mingle"])
    return 0
