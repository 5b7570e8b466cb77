"""`fervid worker`: a Celery worker consuming the configured queue(s)."""

from __future__ import annotations

import argparse
import os

from fervid.queue import SIDE_SUFFIXES
from fervid.settings import get_settings
from fervid.webhooks import signing_secrets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes (one per core is typical)")
    parser.add_argument("--queues", default=None,
                        help="comma list of job queues (default: FERVID_QUEUE); each one's webhook and stills queues "
                             "are served too")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--name", default=None, help="Celery node name (default fervid-<queue>@<host>-<pid>)")


def with_side_queues(queues: str) -> list[str]:
    """The queues of a comma list, each job queue followed by its side queues (webhooks, stills): a worker that takes
    a queue's jobs delivers their webhooks and renders their stills too, however it was started, so that nothing
    waits for a consumer nobody started."""
    served: list[str] = []
    for queue in (name.strip() for name in queues.split(",")):
        job_queue = next((queue.removesuffix(suffix) for suffix in SIDE_SUFFIXES if queue.endswith(suffix)), queue)
        for name in (queue, *(job_queue + suffix for suffix in SIDE_SUFFIXES)):
            if queue and name not in served:
                served.append(name)
    return served


def run(args: argparse.Namespace) -> int:
    # loading these pulls in the ML runtime
    from worker.layout import WorkerLayout, usable_cores
    from worker.tasks import app, configure_worker

    # The usable cores are split between the worker processes so inference threads do not fight each other;
    # the children are forked from this process, so they inherit these settings.
    layout = WorkerLayout.split(get_settings(), usable_cores(), args.concurrency)
    signing_secrets(layout.settings)  # a weak or malformed webhook secret stops the worker here, before it serves
    configure_worker(layout)
    queues = ",".join(with_side_queues(args.queues or layout.settings.queue))
    name = args.name or f"fervid-{layout.settings.queue}@%h-{os.getpid()}"
    app.worker_main(["worker", f"--concurrency={args.concurrency}", f"--queues={queues}", f"--loglevel={args.loglevel}",
                     f"--hostname={name}", "--pool=prefork", "--without-gossip", "--without-mingle"])
    return 0
