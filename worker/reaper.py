"""The reaper: re-sends work whose message or worker was lost, finishes jobs whose finisher was lost, sends the
webhooks still owed (fervid.lifecycle's outbox), and sends waiting work that no dispatch sent (fervid.dispatch: its
sender died, or a deleted job freed its tenant's room).

Work that has had FERVID_MAX_ATTEMPTS deliveries is not re-sent: its job fails processing_failed, so a file that
kills every worker it reaches ends instead of being redelivered forever.

Every step claims its rows with one atomic UPDATE ... RETURNING, so many reapers (one per worker process) can run
at once and each stale row is re-sent by one of them; a duplicate message is harmless anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from fervid import lifecycle
from fervid.db import session_scope
from fervid.dispatch import dispatch_waiting
from fervid.queue import send_prepare, send_segment, send_webhook
from fervid.settings import Settings
from fervid.tables import Job
from worker.record_store import finish_job_if_complete
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
    webhooks: int = 0  # owed webhook events whose message was never sent or lost: sent (again)

    @property
    def total(self) -> int:
        return (self.stale_segments + self.lost_segments + self.queued_jobs + self.finished_jobs
                + self.stale_prepares + self.exhausted_jobs + self.dispatched + self.webhooks)


def reap_once(settings: Settings, judge_staleness: bool = True) -> ReapReport:
    """One pass on the database's clock; the re-sends happen after the claiming transaction commits.

    `judge_staleness` False skips the stale work: after the database was unreachable, heartbeats that could not be
    written are stale without their workers being gone (start_reaper_thread waits one FERVID_STALE_AFTER_S)."""
    with session_scope() as session:
        now = lifecycle.database_now(session)
        stale_segments, stale_prepares, exhausted = lifecycle.requeue_stale(
            session, now, settings.stale_after_s, settings.max_attempts) if judge_staleness else ([], [], [])
        lost_segments, lost_prepares = lifecycle.resend_lost(session, now, settings.requeue_after_s)
        owed_webhooks = lifecycle.claim_owed_webhooks(session, now, settings.requeue_after_s)
        complete = lifecycle.complete_running_jobs(session)
    queues = _queues({job_id for job_id, _ in [*stale_segments, *lost_segments]}
                     | set(lost_prepares) | set(stale_prepares))
    for job_id, index in [*stale_segments, *lost_segments]:
        send_segment(job_id, index, queues.get(job_id, settings.queue))
    for job_id in [*lost_prepares, *stale_prepares]:
        send_prepare(job_id, queues.get(job_id, settings.queue))
    for job_id, event_id, queue in owed_webhooks:
        send_webhook(job_id, event_id, queue)
    finished = sum(finish_job_if_complete(job_id) for job_id in complete)
    dispatched = dispatch_waiting(settings.tasks_per_tenant)
    return ReapReport(len(stale_segments), len(lost_segments), len(lost_prepares), finished, len(stale_prepares),
                      len(exhausted), dispatched, len(owed_webhooks))


def _queues(job_ids: set[str]) -> dict[str, str]:
    """Each job's own queue, so a GPU job's work is re-sent to the GPU queue whichever worker reaps it."""
    if not job_ids:
        return {}
    with session_scope() as session:
        return {job_id: queue for job_id, queue in session.execute(select(Job.id, Job.queue)
                                                                   .where(Job.id.in_(job_ids)))}


def start_reaper_thread(settings: Settings) -> threading.Event:
    """Runs reap_once every `settings.reaper_interval_s` in a daemon thread until the returned event is set."""
    interval_s = settings.reaper_interval_s
    stop = threading.Event()

    def loop() -> None:
        reachable_since: float | None = None  # since when the database has answered every pass
        while not stop.wait(interval_s):
            reachable_since = reachable_since or time.monotonic()
            try:
                report = reap_once(settings, time.monotonic() - reachable_since >= settings.stale_after_s)
                expired, swept = retention_pass(settings)
            except Exception:  # a database or broker outage: logged, and the next pass tries again
                log.exception("reaper pass failed; retrying in %.0f s", interval_s)
                reachable_since = None
                continue
            if report.total:
                log.info("reaper: re-sent %d stale and %d lost segments, %d queued jobs and %d stale prepares; "
                         "finished %d jobs; failed %d out of attempts; sent %d waiting tasks and %d owed webhooks",
                         report.stale_segments, report.lost_segments, report.queued_jobs, report.stale_prepares,
                         report.finished_jobs, report.exhausted_jobs, report.dispatched, report.webhooks)
            if expired or swept:
                log.info("retention: deleted %d expired jobs and %d cached downloads", expired, swept)

    threading.Thread(target=loop, name="fervid-reaper", daemon=True).start()
    return stop
