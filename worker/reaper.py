"""The reaper: re-sends work whose message or worker was lost, finishes jobs whose finisher was lost, and sends
waiting work that no dispatch sent (fervid.dispatch: its sender died, or a deleted job freed its tenant's room).

Work that has had FERVID_MAX_ATTEMPTS deliveries is not re-sent: its job fails processing_failed, so a file that
kills every worker it reaches ends instead of being redelivered forever.

Every step claims its rows with one atomic UPDATE ... RETURNING, so many reapers (one per worker process) can run
at once and each stale row is re-sent by one of them; a duplicate message is harmless anyway.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from fervid.db import session_scope
from fervid.dispatch import dispatch_waiting
from fervid.errors import PROCESSING_FAILED
from fervid.queue import send_prepare, send_segment
from fervid.settings import Settings
from fervid.tables import Job, JobStatus, Segment, SegmentStatus
from fervid.utc import utc_now
from fervid.webhooks import queue_webhook
from worker.record_store import exhausted_message, fail_job, finish_job_if_complete
from worker.retention import retention_pass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapReport:
    stale_segments: int = 0  # running, but their worker stopped heartbeating: back to pending and re-sent
    lost_segments: int = 0  # sent, but pending for too long (message lost): re-sent
    queued_jobs: int = 0  # sent, but queued for too long (message lost): prepare re-sent
    finished_jobs: int = 0  # running with every segment done (the finisher was lost): finished here
    stale_prepares: int = 0  # preparing, but their worker stopped heartbeating: back to queued and re-sent
    exhausted_jobs: int = 0  # stale work that had its FERVID_MAX_ATTEMPTS: the job failed processing_failed
    dispatched: int = 0  # waiting tasks (never sent) sent now, where their tenant had room

    @property
    def total(self) -> int:
        return (self.stale_segments + self.lost_segments + self.queued_jobs + self.finished_jobs
                + self.stale_prepares + self.exhausted_jobs + self.dispatched)


def reap_once(settings: Settings, now: datetime | None = None) -> ReapReport:
    """One pass; the re-sends happen after the claiming transaction commits."""
    now = now or utc_now()
    stale_before = now - timedelta(seconds=settings.stale_after_s)
    lost_before = now - timedelta(seconds=settings.requeue_after_s)
    running_jobs = select(Job.id).where(Job.status == JobStatus.running)
    max_attempts = settings.max_attempts
    stale_segment = and_(Segment.status == SegmentStatus.running, Segment.job_id.in_(running_jobs),
                         or_(Segment.heartbeat_at < stale_before, Segment.heartbeat_at.is_(None)))
    with session_scope() as session:
        stale = session.execute(
            update(Segment).where(stale_segment, Segment.attempts < max_attempts)
            .values(status=SegmentStatus.pending, worker=None, enqueued_at=now)
            .returning(Segment.job_id, Segment.index).execution_options(synchronize_session=False)
        ).all()
    with session_scope() as session:
        exhausted_segments = session.execute(
            select(Segment.job_id, Segment.index).where(stale_segment, Segment.attempts >= max_attempts)).all()
    exhausted = [job_id for job_id, index in exhausted_segments
                 if fail_job(job_id, PROCESSING_FAILED, exhausted_message(f"segment {index}", max_attempts))]
    stale_prepare = and_(Job.status == JobStatus.preparing,
                         or_(Job.heartbeat_at < stale_before, Job.heartbeat_at.is_(None)))
    with session_scope() as session:
        # Back to queued: the prepare re-sent below claims it again, counting one more attempt.
        stale_prepares = session.scalars(
            update(Job).where(stale_prepare, Job.prepare_attempts < max_attempts)
            .values(status=JobStatus.queued, enqueued_at=now)
            .returning(Job.id).execution_options(synchronize_session=False)
        ).all()
    with session_scope() as session:
        exhausted += session.scalars(
            update(Job).where(stale_prepare, Job.prepare_attempts >= max_attempts)
            .values(status=JobStatus.failed, error_code=PROCESSING_FAILED, finished_at=now,
                    error_message=exhausted_message("fetching and probing the media", max_attempts))
            .returning(Job.id).execution_options(synchronize_session=False)
        ).all()
    # Sent long ago and not started: the message was lost (never sent, enqueued_at NULL, is waiting: see below).
    with session_scope() as session:
        lost = session.execute(
            update(Segment).where(Segment.status == SegmentStatus.pending, Segment.enqueued_at < lost_before,
                                  Segment.job_id.in_(running_jobs))
            .values(enqueued_at=now)
            .returning(Segment.job_id, Segment.index).execution_options(synchronize_session=False)
        ).all()
    with session_scope() as session:
        queued = session.scalars(
            update(Job).where(Job.status == JobStatus.queued, Job.enqueued_at < lost_before)
            .values(enqueued_at=now)
            .returning(Job.id).execution_options(synchronize_session=False)
        ).all()
    queues = _queues({job_id for job_id, _ in [*stale, *lost]} | set(queued) | set(stale_prepares))
    for job_id, index in [*stale, *lost]:
        send_segment(job_id, index, queues.get(job_id, settings.queue))
    for job_id in [*queued, *stale_prepares]:
        send_prepare(job_id, queues.get(job_id, settings.queue))
    for job_id in exhausted:
        queue_webhook(job_id)
    finished = 0
    for job_id in _complete_running_jobs():
        if finish_job_if_complete(job_id):
            finished += 1
            queue_webhook(job_id)
    dispatched = dispatch_waiting(settings.tasks_per_tenant)
    return ReapReport(len(stale), len(lost), len(queued), finished, len(stale_prepares), len(exhausted), dispatched)


def _queues(job_ids: set[str]) -> dict[str, str]:
    """Each job's own queue, so a GPU job's work is re-sent to the GPU queue whichever worker reaps it."""
    if not job_ids:
        return {}
    with session_scope() as session:
        return {job_id: queue for job_id, queue in session.execute(select(Job.id, Job.queue)
                                                                   .where(Job.id.in_(job_ids)))}


def _complete_running_jobs() -> list[str]:
    """Running jobs whose segments exist and are all done: their last worker stored but did not finish."""
    with session_scope() as session:
        has_segments = select(Segment.job_id).where(Segment.job_id == Job.id).exists()
        unfinished = select(Segment.job_id).where(Segment.job_id == Job.id, Segment.status != SegmentStatus.done)
        return list(session.scalars(select(Job.id).where(Job.status == JobStatus.running, has_segments,
                                                         ~unfinished.exists())))


def start_reaper_thread(settings: Settings) -> threading.Event:
    """Runs reap_once every `settings.reaper_interval_s` in a daemon thread until the returned event is set."""
    interval_s = settings.reaper_interval_s
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                report = reap_once(settings)
                expired, swept = retention_pass(settings)
            except Exception:  # a database or broker outage: logged, and the next pass tries again
                log.exception("reaper pass failed; retrying in %.0f s", interval_s)
                continue
            if report.total:
                log.info("reaper: re-sent %d stale and %d lost segments, %d queued jobs and %d stale prepares; "
                         "finished %d jobs; failed %d out of attempts; sent %d waiting tasks", report.stale_segments,
                         report.lost_segments, report.queued_jobs, report.stale_prepares, report.finished_jobs,
                         report.exhausted_jobs, report.dispatched)
            if expired or swept:
                log.info("retention: deleted %d expired jobs and %d cached downloads", expired, swept)

    threading.Thread(target=loop, name="fervid-reaper", daemon=True).start()
    return stop
