"""`fervid worker`: a Celery worker consuming the configured queue(s)."""

from __future__ import annotations

import argparse
import os

from fervid.settings import get_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes (one per core is typical)")
    parser.add_argument("--queues", default=None, help="comma list (default: FERVID_QUEUE, i.e. cpu)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--name", default=None, help="Celery node name (default fervid-<queue>@<host>-<pid>)")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    queues = args.queues or settings.queue
    # Split the cores between the worker processes so inference threads do not fight each other.
    os.environ.setdefault("FERVID_INFERENCE_THREADS", str(max(1, (os.cpu_count() or 1) // args.concurrency)))
    from worker.tasks import app  # imported here: loading tasks pulls in the ML runtime

    name = args.name or f"fervid-{queues.replace(',', '-')}@%h-{os.getpid()}"
    app.worker_main(["worker", f"--concurrency={args.concurrency}", f"--queues={queues}", f"--loglevel={args.loglevel}",
                     f"--hostname={name}", "--pool=prefork", "--without-gossip", "--without-mingle"])
    return 0
