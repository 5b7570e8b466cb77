"""The download cache's sweep: copies of remote media kept for jobs that are gone are removed. Workers run it with
their reaper (worker/retention.py); the API, which fetches a job's remote media to serve it, runs it on its own
machine's cache (`start_sweeping`)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import select

from fervid.db import session_scope
from fervid.media_store import cached_download_owners
from fervid.tables import Job

log = logging.getLogger(__name__)


def sweep_download_cache(directory: Path) -> int:
    """Removes cached downloads (and their locks) of jobs no longer in the database; returns the files removed."""
    owners = cached_download_owners(directory)
    if not owners:
        return 0
    with session_scope() as session:
        alive = set(session.scalars(select(Job.id).where(Job.id.in_(list(owners)))))
    removed = 0
    for job_id, paths in owners.items():
        if job_id in alive:
            continue
        for path in paths:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def start_sweeping(directory: Path, interval_s: float) -> threading.Event:
    """Sweeps `directory` every `interval_s` in a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                if removed := sweep_download_cache(directory):
                    log.info("download cache: removed %d files of jobs that are gone", removed)
            except Exception:  # a database outage: the next pass tries again
                log.exception("download cache sweep failed; retrying in %.0f s", interval_s)

    threading.Thread(target=loop, name="fervid-download-sweep", daemon=True).start()
    return stop
