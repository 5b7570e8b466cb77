"""Retention, run by every worker's reaper thread: finished jobs past FERVID_RETENTION_DAYS are deleted (rows and
stored media, with an audit row), and this machine's download cache drops the copies of jobs that are gone (the API
sweeps its own machine's: fervid/download_sweep.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from fervid.audit import JOB_EXPIRED
from fervid.db import session_scope
from fervid.download_sweep import sweep_download_cache
from fervid.jobs import delete_job
from fervid.lifecycle import ACTIVE_JOB_STATUSES
from fervid.media_store import storage_from_url
from fervid.settings import Settings
from fervid.tables import Job
from fervid.utc import utc_now

log = logging.getLogger(__name__)

EXPIRE_BATCH = 100  # per pass: a large backlog drains over a few passes instead of one long transaction


def expire_jobs(retention_days: float, storage_url: str, now: datetime | None = None) -> int:
    """Deletes up to EXPIRE_BATCH finished jobs that ended more than `retention_days` ago; returns how many."""
    ended_before = (now or utc_now()) - timedelta(days=retention_days)
    storage = storage_from_url(storage_url)
    expired = 0
    with session_scope() as session:
        jobs = session.scalars(select(Job).where(Job.status.not_in(ACTIVE_JOB_STATUSES),
                                                 Job.finished_at < ended_before).limit(EXPIRE_BATCH)).all()
        for job in jobs:
            expired += delete_job(session, job, storage, action=JOB_EXPIRED)  # False: another reaper got it
    return expired


def retention_pass(settings: Settings) -> tuple[int, int]:
    """(jobs expired, cached files removed) in one pass."""
    expired = expire_jobs(settings.retention_days, settings.storage_url) if settings.retention_days else 0
    return expired, sweep_download_cache(settings.download_cache_dir)
