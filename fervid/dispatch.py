"""Fair dispatch: a tenant has at most FERVID_TASKS_PER_TENANT prepare and segment tasks sent to a queue and not
finished; the rest wait in the database (enqueued_at NULL) and are sent, its oldest job's first, as those finish.

The broker's queue stays first in, first out, but a tenant's backlog holds only its window of it, so a job
submitted later waits behind at most a window of each other tenant's work instead of all of it.

Waiting tasks are sent by the API after a job commits, by a worker after each task, and by every reaper pass (for
what those missed: a sender that died, the room a deleted job freed). A transaction-level lock per tenant and
queue makes the count and the claim one step, so dispatchers on many hosts at once never overfill a window.
Claims commit before anything is sent; a send that fails hands its claims back to waiting.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from fervid.db import lock_for_transaction, session_scope
from fervid.lifecycle import (
    PREPARE_IN_FLIGHT,
    SEGMENT_IN_FLIGHT,
    WAITING_PREPARE,
    WAITING_SEGMENT,
    mark_sent,
    mark_unsent,
)
from fervid.queue import send_prepare, send_segment
from fervid.tables import Job, Segment

log = logging.getLogger(__name__)


class WaitingTask(NamedTuple):
    """A task not sent yet, in the order a tenant's tasks are sent: oldest job first, its prepare before its
    segments (which exist only after it)."""

    created_at: datetime  # its job's
    job_id: str
    segment_index: int | None  # None: the job's prepare


def dispatch(session: Session, tenant: str, queue: str, tasks_per_tenant: int) -> int:
    """Sends the tenant's waiting tasks on `queue` while fewer than `tasks_per_tenant` of its tasks there are sent
    and unfinished; returns how many were sent. Commits the session (its transaction held the tenant's lock)."""
    lock_for_transaction(session, f"dispatch:{queue}:{tenant}")
    room = tasks_per_tenant - _in_flight(session, tenant, queue)
    claimed = _claim(session, tenant, queue, room) if room > 0 else []
    session.commit()
    return _send(session, claimed, queue)


def dispatch_for_job(job_id: str, tasks_per_tenant: int) -> int:
    """dispatch() for the tenant and queue of a job (a worker knows only the job it ran); 0 when it is gone."""
    with session_scope() as session:
        owner = session.execute(select(Job.tenant, Job.queue).where(Job.id == job_id)).first()
        if owner is None:
            return 0
        return dispatch(session, owner.tenant, owner.queue, tasks_per_tenant)


def dispatch_waiting(tasks_per_tenant: int) -> int:
    """dispatch() for every tenant and queue with a waiting task; returns how many were sent."""
    with session_scope() as session:
        has_waiting_segment = select(Segment.job_id).where(Segment.job_id == Job.id, WAITING_SEGMENT).exists()
        owners = session.execute(select(Job.tenant, Job.queue).where(or_(WAITING_PREPARE, has_waiting_segment))
                                 .distinct()).all()
    sent = 0
    for tenant, queue in owners:
        with session_scope() as session:
            sent += dispatch(session, tenant, queue, tasks_per_tenant)
    return sent


def waiting_tasks(session: Session) -> int:
    """Tasks of every tenant waiting for room in their window: the backlog the broker's queues do not show."""
    prepares = select(func.count()).select_from(Job).where(WAITING_PREPARE)
    segments = select(func.count()).select_from(Segment).join(Job, Segment.job_id == Job.id).where(WAITING_SEGMENT)
    return int(session.scalar(prepares) or 0) + int(session.scalar(segments) or 0)


def _in_flight(session: Session, tenant: str, queue: str) -> int:
    """The tenant's tasks on `queue` that are sent and not finished: in the broker, or running."""
    owned = and_(Job.tenant == tenant, Job.queue == queue)
    prepares = select(func.count()).select_from(Job).where(owned, PREPARE_IN_FLIGHT)
    segments = select(func.count()).select_from(Segment).join(Job, Segment.job_id == Job.id).where(
        owned, SEGMENT_IN_FLIGHT)
    return int(session.scalar(prepares) or 0) + int(session.scalar(segments) or 0)


def _claim(session: Session, tenant: str, queue: str, room: int) -> list[WaitingTask]:
    """Marks the tenant's first `room` waiting tasks sent (enqueued_at now) and returns them."""
    owned = and_(Job.tenant == tenant, Job.queue == queue)
    prepares = [WaitingTask(created_at, job_id, None) for job_id, created_at in session.execute(
        select(Job.id, Job.created_at).where(owned, WAITING_PREPARE).order_by(Job.created_at, Job.id).limit(room))]
    segments = [WaitingTask(created_at, job_id, index) for job_id, index, created_at in session.execute(
        select(Segment.job_id, Segment.index, Job.created_at).join(Job, Segment.job_id == Job.id)
        .where(owned, WAITING_SEGMENT).order_by(Job.created_at, Job.id, Segment.index).limit(room))]
    chosen = sorted(prepares + segments, key=_send_order)[:room]
    # Guarded like every claim: a job cancelled since the select is left alone.
    claimed_jobs, claimed_segments = mark_sent(
        session, [task.job_id for task in chosen if task.segment_index is None],
        [(task.job_id, task.segment_index) for task in chosen if task.segment_index is not None])
    return [task for task in chosen if (task.job_id in claimed_jobs if task.segment_index is None
                                        else (task.job_id, task.segment_index) in claimed_segments)]


def _send_order(task: WaitingTask) -> tuple[datetime, str, int]:
    return task.created_at, task.job_id, -1 if task.segment_index is None else task.segment_index


def _send(session: Session, claimed: list[WaitingTask], queue: str) -> int:
    """Sends the claimed tasks in order; at the first that fails (the broker is down) they and the rest go back to
    waiting, for the next dispatch. Returns how many were sent."""
    for sent, task in enumerate(claimed):
        try:
            if task.segment_index is None:
                send_prepare(task.job_id, queue)
            else:
                send_segment(task.job_id, task.segment_index, queue)
        except Exception:  # any broker failure: the tasks wait for the next dispatch (the reaper's, at the latest)
            log.exception("could not send job %s's tasks; they wait for the next dispatch", task.job_id)
            _unclaim(session, claimed[sent:])
            return sent
    return len(claimed)


def _unclaim(session: Session, tasks: list[WaitingTask]) -> None:
    mark_unsent(session, [task.job_id for task in tasks if task.segment_index is None],
                [(task.job_id, task.segment_index) for task in tasks if task.segment_index is not None])
    session.commit()
