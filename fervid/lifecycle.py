"""A job's life in one place: its statuses, the moves between them, and every guarded write of jobs and segments.

    queued ──claim_prepare──> preparing ──start_running──> running ──succeed──> succeeded
      ^                           │                           │
      └──── requeue_stale ────────┘       fail / cancel, from any of the three ──> failed | cancelled

Who moves a job out of ...
- queued: a worker's `claim_prepare`; the API's `cancel`; `claim_prepare` itself fails a job whose prepares are
  spent (FERVID_MAX_ATTEMPTS).
- preparing: the prepare that holds it (`start_running`, or `fail` for bad media); the API's `cancel`; the reaper's
  `requeue_stale` (back to queued when its worker stopped heartbeating, failed once its attempts are spent).
- running: whoever stores the last segment (`succeed`, called by worker.record_store, which stitches the tracks in
  the same transaction; the reaper again if that worker died first); `fail` (bad media, a segment out of
  attempts); the API's `cancel`.

Who sends the webhook: every move into an end status (`_end`) records the owed event in `webhook_events`, with its
one event_id, in the transaction that makes the move. Right after that transaction commits, the process that made it
sends the event to the webhook queue (`_send_owed_after_commit`); the reapers send again what is still owed once its
message may be lost (`claim_owed_webhooks`); the webhook task records each attempt (`record_webhook_attempt`). A
crash, a broker error or a flushed Redis between the commit and the send delays the event, never loses it, and
every attempt carries the same event_id.

Ownership: each claim carries a token (the Celery delivery's id) and every later write of that work checks it. A
running prepare or segment is taken over only when its heartbeat is stale, or when its own delivery comes back
(the worker that ran it died); a duplicate delivery of work another owner runs spends no attempt and does nothing.
A task counts against its tenant's window until its worker lets it go (`release_*`), also after its job ended.

Time is the database's (`database_now`): heartbeats, staleness and re-sends compare one clock, whatever the clocks
of the workers and the API say.
"""

from __future__ import annotations

import enum
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Executable,
    Update,
    and_,
    case,
    event,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from fervid.db import session_scope
from fervid.errors import PROCESSING_FAILED
from fervid.queue import send_webhook
from fervid.sampling import PlannedFrame
from fervid.tables import Job, Segment, WebhookEvent
from fervid.utc import utc_now

log = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    queued = "queued"  # its prepare is sent (or waits for its tenant's room: fervid.dispatch)
    preparing = "preparing"  # a worker fetches and probes its media, heartbeating jobs.heartbeat_at
    running = "running"  # its segments are analysed
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class SegmentStatus(enum.StrEnum):
    pending = "pending"
    running = "running"  # a worker holds it (claim_token) and heartbeats it
    done = "done"
    cancelled = "cancelled"


# The statuses a job can still move from (and be cancelled in); the others are its end.
ACTIVE_JOB_STATUSES = (JobStatus.queued, JobStatus.preparing, JobStatus.running)
END_JOB_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
OPEN_SEGMENT_STATUSES = (SegmentStatus.pending, SegmentStatus.running)
JOB_MOVES: dict[JobStatus, tuple[JobStatus, ...]] = {
    JobStatus.queued: (JobStatus.preparing, JobStatus.failed, JobStatus.cancelled),
    JobStatus.preparing: (JobStatus.queued, JobStatus.running, JobStatus.failed, JobStatus.cancelled),
    JobStatus.running: (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled),
    **{status: () for status in END_JOB_STATUSES},
}
JOB_MOVES_INTO: dict[JobStatus, tuple[JobStatus, ...]] = {
    status: tuple(source for source, targets in JOB_MOVES.items() if status in targets) for status in JobStatus}


def database_now(session: Session) -> datetime:
    """The database's clock: PostgreSQL's transaction time. An SQLite database lives on this machine, whose clock is
    the one every process using it reads."""
    if session.connection().dialect.name == "postgresql":
        return cast(datetime, session.scalar(select(func.now())))
    return utc_now()


def _update(entity: type[Job] | type[Segment] | type[WebhookEvent]) -> Update:
    # Sessions here never hold loaded records, so there is nothing to synchronise.
    return update(entity).execution_options(synchronize_session=False)


def _rowcount(session: Session, statement: Executable) -> int:
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _job_is_running(job_id: str) -> ColumnElement[bool]:
    return select(Job.id).where(Job.id == job_id, Job.status == JobStatus.running).exists()


def exhausted_message(what: str, attempts: int) -> str:
    """The error message of a job failed PROCESSING_FAILED after `attempts` deliveries of its `what`."""
    return (f"{what} stopped or outlasted a worker on each of its {attempts} attempts (FERVID_MAX_ATTEMPTS), so "
            "it is not tried again; check that the file plays, or send a shorter or re-encoded copy")


# --- ends, and the webhook each one owes -------------------------------------------------------------------------

_OWED = "fervid_owed_webhooks"  # session.info: (job_id, event_id, queue) to send once the transaction commits


def _end(session: Session, job_id: str, status: JobStatus, *guards: ColumnElement[bool], **values: Any) -> bool:
    """Moves an active job to the end `status` (under `guards`) and records its owed webhook; True when it moved.
    Pending segments are cancelled; running ones keep counting until their worker lets them go."""
    now = database_now(session)
    ended = session.execute(_update(Job).where(Job.id == job_id, Job.status.in_(JOB_MOVES_INTO[status]), *guards)
                            .values(status=status, finished_at=now, **values)
                            .returning(Job.queue, Job.webhook_url)).first()
    if ended is None:
        return False
    queue, webhook_url = ended
    session.execute(_update(Segment).where(Segment.job_id == job_id, Segment.status == SegmentStatus.pending)
                    .values(status=SegmentStatus.cancelled))
    if webhook_url:
        event_id = uuid.uuid4().hex
        # sent_at now: this process sends it after the commit; the reapers re-send it if that send is lost.
        session.execute(insert(WebhookEvent).values(event_id=event_id, job_id=job_id, created_at=now, due_at=now,
                                                    sent_at=now, attempts=0))
        session.info.setdefault(_OWED, []).append((job_id, event_id, queue))
    return True



@event.listens_for(Session, "after_commit")
def _send_owed_after_commit(session: Session) -> None:
    for job_id, event_id, queue in session.info.pop(_OWED, []):
        try:
            send_webhook(job_id, event_id, queue)
        except Exception:  # a broker outage: the reapers send it once FERVID_REQUEUE_AFTER_S has passed
            log.warning("job %s: webhook event %s not sent now; it is re-sent later", job_id, event_id, exc_info=True)


@event.listens_for(Session, "after_rollback")
def _forget_owed(session: Session) -> None:
    session.info.pop(_OWED, None)


def fail(session: Session, job_id: str, code: str, message: str) -> bool:
    """queued, preparing or running -> failed with an error code; True when this call ended the job."""
    return _end(session, job_id, JobStatus.failed, error_code=code, error_message=message)


def fail_job(job_id: str, code: str, message: str) -> bool:
    """`fail` in a transaction of its own."""
    with session_scope() as session:
        return fail(session, job_id, code, message)


def cancel(session: Session, job_id: str) -> bool:
    """queued, preparing or running -> cancelled; True when this call ended the job. Its running work sees it at
    the next heartbeat and stops."""
    return _end(session, job_id, JobStatus.cancelled)


def succeed(session: Session, job_id: str) -> bool:
    """running -> succeeded when every segment is done; True for exactly one of many concurrent callers."""
    unfinished = select(Segment.job_id).where(Segment.job_id == job_id, Segment.status != SegmentStatus.done)
    return _end(session, job_id, JobStatus.succeeded, ~unfinished.exists())


# --- prepares ----------------------------------------------------------------------------------------------------

def claim_prepare(job_id: str, token: str, *, retrying: bool, max_attempts: int, stale_after_s: float) -> bool:
    """Takes the job's prepare for the delivery `token`: queued -> preparing, one more attempt, a first heartbeat.

    Taken over too: a prepare whose heartbeat is stale, or that this same delivery held (its worker died). Kept,
    with no attempt spent: `retrying`, the delivery's own retry after a transient error. False when there is
    nothing to do: another delivery prepares it, or it moved on; a job whose prepares are spent is failed here.
    """
    with session_scope() as session:
        now = database_now(session)
        if retrying and _rowcount(session, _update(Job).where(
                Job.id == job_id, Job.status == JobStatus.preparing, Job.prepare_token == token)
                .values(heartbeat_at=now)):
            return True
        free = or_(Job.status == JobStatus.queued, and_(Job.status == JobStatus.preparing, or_(
            Job.prepare_token == token, Job.heartbeat_at.is_(None),
            Job.heartbeat_at < now - timedelta(seconds=stale_after_s))))
        if _rowcount(session, _update(Job).where(Job.id == job_id, free, Job.prepare_attempts < max_attempts).values(
                status=JobStatus.preparing, prepare_token=token, heartbeat_at=now,
                prepare_attempts=Job.prepare_attempts + 1)):
            return True
        if session.scalar(select(Job.id).where(Job.id == job_id, free)) is not None:
            fail(session, job_id, PROCESSING_FAILED, exhausted_message("fetching and probing the media", max_attempts))
        return False


def prepare_heartbeat(job_id: str, token: str) -> bool:
    """Records that the prepare is alive; False when it must stop (cancelled, failed, taken over)."""
    with session_scope() as session:
        return _rowcount(session, _update(Job).where(
            Job.id == job_id, Job.status == JobStatus.preparing, Job.prepare_token == token)
            .values(heartbeat_at=database_now(session))) == 1


def start_running(session: Session, job_id: str, token: str, **media: Any) -> bool:
    """preparing -> running with the media's and the model's facts, if `token` still holds the prepare; the prepare
    lets go of the job in the same move."""
    return _rowcount(session, _update(Job).where(
        Job.id == job_id, Job.status == JobStatus.preparing, Job.prepare_token == token).values(
        status=JobStatus.running, started_at=func.coalesce(Job.started_at, database_now(session)),
        prepare_token=None, **media)) == 1


def release_prepare(job_id: str, token: str) -> None:
    """The prepare of `token` has stopped: the job no longer counts it (fervid.dispatch)."""
    with session_scope() as session:
        session.execute(_update(Job).where(Job.id == job_id, Job.prepare_token == token).values(prepare_token=None))


# --- segments ----------------------------------------------------------------------------------------------------

def claim_segment(job_id: str, index: int, token: str, worker: str, *, retrying: bool, max_attempts: int,
                  stale_after_s: float) -> list[PlannedFrame] | None:
    """Takes a segment of a running job for the delivery `token` and returns its plan; None when there is nothing
    to do. Taken as claim_prepare takes a prepare: pending, stale, or held by this same delivery (one more
    attempt), or kept by its own retry. A segment whose attempts are spent fails its job here."""
    with session_scope() as session:
        now = database_now(session)
        this = (Segment.job_id == job_id, Segment.index == index, _job_is_running(job_id))
        if retrying:
            plan = session.scalar(_update(Segment).where(*this, Segment.status == SegmentStatus.running,
                                                         Segment.claim_token == token)
                                  .values(heartbeat_at=now).returning(Segment.plan))
            if plan is not None:
                return cast(list[PlannedFrame], plan)
        free = or_(Segment.status == SegmentStatus.pending, and_(Segment.status == SegmentStatus.running, or_(
            Segment.claim_token == token, Segment.heartbeat_at.is_(None),
            Segment.heartbeat_at < now - timedelta(seconds=stale_after_s))))
        plan = session.scalar(_update(Segment).where(*this, free, Segment.attempts < max_attempts).values(
            status=SegmentStatus.running, attempts=Segment.attempts + 1, heartbeat_at=now, worker=worker,
            claim_token=token, frames_done=0).returning(Segment.plan))
        if plan is None and session.scalar(select(Segment.index).where(*this, free)) is not None:
            fail(session, job_id, PROCESSING_FAILED, exhausted_message(f"segment {index}", max_attempts))
        return cast(list[PlannedFrame] | None, plan)


def segment_heartbeat(job_id: str, index: int, token: str, frames_done: int) -> bool:
    """Records liveness and progress; False when the work must stop (job not running, segment taken over)."""
    with session_scope() as session:
        return _rowcount(session, _update(Segment).where(
            Segment.job_id == job_id, Segment.index == index, Segment.status == SegmentStatus.running,
            Segment.claim_token == token, _job_is_running(job_id))
            .values(heartbeat_at=database_now(session), frames_done=frames_done)) == 1


def complete_segment(session: Session, job_id: str, index: int, token: str, frames_done: int,
                     warnings: list[str]) -> list[PlannedFrame] | None:
    """running -> done if `token` still holds the segment of a running job; its plan, or None (nothing written)."""
    return cast(list[PlannedFrame] | None, session.scalar(_update(Segment).where(
        Segment.job_id == job_id, Segment.index == index, Segment.status == SegmentStatus.running,
        Segment.claim_token == token, _job_is_running(job_id))
        .values(status=SegmentStatus.done, frames_done=frames_done, warnings=list(warnings), claim_token=None,
                heartbeat_at=database_now(session)).returning(Segment.plan)))


def release_segment(job_id: str, index: int, token: str) -> None:
    """The segment of `token` stopped without being stored: cancelled when its job ended, else pending again (the
    reaper re-sends it). No longer counted against its tenant (fervid.dispatch)."""
    with session_scope() as session:
        session.execute(_update(Segment).where(
            Segment.job_id == job_id, Segment.index == index, Segment.status == SegmentStatus.running,
            Segment.claim_token == token).values(
            claim_token=None, worker=None, enqueued_at=database_now(session),
            status=case((_job_is_running(job_id), SegmentStatus.pending), else_=SegmentStatus.cancelled)))


# --- the reaper's moves ------------------------------------------------------------------------------------------

def requeue_stale(session: Session, now: datetime, stale_after_s: float,
                  max_attempts: int) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """Work whose worker stopped heartbeating: a running job's segments back to pending, preparing jobs back to
    queued (each re-sent by the caller, claimed again with one more attempt); the jobs of those out of attempts are
    failed. The work of ended jobs is let go. Returns (segments, prepares) to re-send and the jobs failed."""
    stale_before = now - timedelta(seconds=stale_after_s)
    stale = or_(Segment.heartbeat_at < stale_before, Segment.heartbeat_at.is_(None))
    running_jobs = select(Job.id).where(Job.status == JobStatus.running)
    stale_segment = and_(Segment.status == SegmentStatus.running, Segment.job_id.in_(running_jobs), stale)
    segments = [(job_id, index) for job_id, index in session.execute(
        _update(Segment).where(stale_segment, Segment.attempts < max_attempts)
        .values(status=SegmentStatus.pending, worker=None, claim_token=None, enqueued_at=now)
        .returning(Segment.job_id, Segment.index))]
    failed = [job_id for job_id, index in session.execute(
        select(Segment.job_id, Segment.index).where(stale_segment, Segment.attempts >= max_attempts))
        if fail(session, job_id, PROCESSING_FAILED, exhausted_message(f"segment {index}", max_attempts))]
    session.execute(_update(Segment).where(Segment.status == SegmentStatus.running,
                                           Segment.job_id.not_in(running_jobs), stale)
                    .values(status=SegmentStatus.cancelled, claim_token=None))
    stale_job = or_(Job.heartbeat_at < stale_before, Job.heartbeat_at.is_(None))
    stale_prepare = and_(Job.status == JobStatus.preparing, stale_job)
    prepares = list(session.scalars(
        _update(Job).where(stale_prepare, Job.prepare_attempts < max_attempts)
        .values(status=JobStatus.queued, prepare_token=None, enqueued_at=now).returning(Job.id)))
    failed += [job_id for job_id in session.scalars(
        select(Job.id).where(stale_prepare, Job.prepare_attempts >= max_attempts))
        if fail(session, job_id, PROCESSING_FAILED, exhausted_message("fetching and probing the media", max_attempts))]
    session.execute(_update(Job).where(Job.status != JobStatus.preparing, Job.prepare_token.is_not(None), stale_job)
                    .values(prepare_token=None))
    return segments, prepares, failed


def resend_lost(session: Session, now: datetime, requeue_after_s: float) -> tuple[list[tuple[str, int]], list[str]]:
    """Work sent `requeue_after_s` ago and still not started (its message was lost): marked sent again now and
    returned, (segments, prepares), for the caller to re-send. A duplicate is harmless: it spends nothing."""
    lost_before = now - timedelta(seconds=requeue_after_s)
    segments = [(job_id, index) for job_id, index in session.execute(
        _update(Segment).where(Segment.status == SegmentStatus.pending, Segment.enqueued_at < lost_before,
                               Segment.job_id.in_(select(Job.id).where(Job.status == JobStatus.running)))
        .values(enqueued_at=now).returning(Segment.job_id, Segment.index))]
    prepares = list(session.scalars(
        _update(Job).where(Job.status == JobStatus.queued, Job.enqueued_at < lost_before)
        .values(enqueued_at=now).returning(Job.id)))
    return segments, prepares


def complete_running_jobs(session: Session) -> list[str]:
    """Running jobs whose segments exist and are all done: their last worker stored but did not finish."""
    has_segments = select(Segment.job_id).where(Segment.job_id == Job.id).exists()
    unfinished = select(Segment.job_id).where(Segment.job_id == Job.id, Segment.status != SegmentStatus.done)
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.running, has_segments,
                                                     ~unfinished.exists())))


# --- sending: the dispatcher's marks ------------------------------------------------------------------------------

# A task waits until a dispatcher marks it sent (enqueued_at); from then it counts against its tenant's window
# until its worker lets it go, also when its job ended meanwhile (fervid.dispatch).
WAITING_PREPARE = and_(Job.status == JobStatus.queued, Job.enqueued_at.is_(None))
PREPARE_IN_FLIGHT = or_(and_(Job.status == JobStatus.queued, Job.enqueued_at.is_not(None)),
                        Job.prepare_token.is_not(None))
WAITING_SEGMENT = and_(Job.status == JobStatus.running, Segment.status == SegmentStatus.pending,
                       Segment.enqueued_at.is_(None))
SEGMENT_IN_FLIGHT = or_(and_(Job.status == JobStatus.running, Segment.status == SegmentStatus.pending,
                             Segment.enqueued_at.is_not(None)),
                        Segment.status == SegmentStatus.running)


def mark_sent(session: Session, job_ids: list[str], segment_keys: list[tuple[str, int]],
              ) -> tuple[set[str], set[tuple[str, int]]]:
    """Marks waiting prepares and segments sent (enqueued_at now); returns those that were still waiting."""
    now = database_now(session)
    jobs: set[str] = set()
    segments: set[tuple[str, int]] = set()
    if job_ids:
        jobs = set(session.scalars(_update(Job).where(Job.id.in_(job_ids), WAITING_PREPARE)
                                   .values(enqueued_at=now).returning(Job.id)))
    if segment_keys:
        segments = {(job_id, index) for job_id, index in session.execute(
            _update(Segment).where(tuple_(Segment.job_id, Segment.index).in_(segment_keys),
                                   Segment.status == SegmentStatus.pending, Segment.enqueued_at.is_(None))
            .values(enqueued_at=now).returning(Segment.job_id, Segment.index))}
    return jobs, segments


def mark_unsent(session: Session, job_ids: list[str], segment_keys: list[tuple[str, int]]) -> None:
    """Hands tasks whose send failed back to waiting; a task that moved on meanwhile is left as it is."""
    if job_ids:
        session.execute(_update(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.queued)
                        .values(enqueued_at=None))
    if segment_keys:
        session.execute(_update(Segment).where(tuple_(Segment.job_id, Segment.index).in_(segment_keys),
                                               Segment.status == SegmentStatus.pending).values(enqueued_at=None))


# --- the webhook outbox --------------------------------------------------------------------------------------------

def claim_owed_webhooks(session: Session, now: datetime, resend_after_s: float,
                        limit: int = 100) -> list[tuple[str, str, str]]:
    """Owed events due now whose message was never sent, or sent `resend_after_s` ago and not answered (lost):
    marked sent and returned as (job_id, event_id, queue) for the caller to send."""
    due = select(WebhookEvent.event_id).where(
        WebhookEvent.outcome.is_(None), WebhookEvent.due_at <= now,
        or_(WebhookEvent.sent_at.is_(None), WebhookEvent.sent_at < now - timedelta(seconds=resend_after_s))
    ).order_by(WebhookEvent.due_at).limit(limit)
    claimed = session.execute(_update(WebhookEvent).where(WebhookEvent.event_id.in_(due.scalar_subquery()))
                              .values(sent_at=now).returning(WebhookEvent.job_id, WebhookEvent.event_id)).all()
    queues = dict(session.execute(select(Job.id, Job.queue).where(Job.id.in_([job_id for job_id, _ in claimed]))
                                  ).tuples().all()) if claimed else {}
    return [(job_id, event_id, queues[job_id]) for job_id, event_id in claimed if job_id in queues]


def webhook_owed(event_id: str) -> bool:
    """Whether the event still waits for an attempt that ends it (a duplicate message finds it ended)."""
    with session_scope() as session:
        return session.scalar(select(WebhookEvent.event_id).where(
            WebhookEvent.event_id == event_id, WebhookEvent.outcome.is_(None))) is not None


def record_webhook_attempt(event_id: str, outcome: str | None, retry_delays_s: tuple[float, ...]) -> None:
    """One attempt's result: `outcome` (delivered, dropped) ends the event; None (a failed attempt) makes it due
    again after the next of `retry_delays_s`, or ends it `failed` once they are spent."""
    with session_scope() as session:
        attempts = session.scalar(_update(WebhookEvent).where(
            WebhookEvent.event_id == event_id, WebhookEvent.outcome.is_(None))
            .values(attempts=WebhookEvent.attempts + 1).returning(WebhookEvent.attempts))
        if attempts is None:
            return
        if outcome is None and attempts > len(retry_delays_s):
            outcome = "failed"
        values: dict[str, Any] = {"outcome": outcome} if outcome is not None else {
            "sent_at": None,
            "due_at": database_now(session) + timedelta(seconds=retry_delays_s[attempts - 1])}
        session.execute(_update(WebhookEvent).where(WebhookEvent.event_id == event_id).values(**values))
