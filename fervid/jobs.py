"""The job lifecycle seen from outside the worker: create (and enqueue), describe, list, cancel, delete."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fervid import audit, lifecycle
from fervid.db import lock_for_transaction
from fervid.dispatch import dispatch
from fervid.errors import QUOTA_EXCEEDED, Conflict, NotFound, TooManyRequests
from fervid.lifecycle import ACTIVE_JOB_STATUSES, JobStatus
from fervid.media_store import Storage
from fervid.settings import TenantQuota
from fervid.tables import AnnotatedVideo, Job, Segment
from fervid.utc import as_utc, iso_utc, utc_now

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return str(uuid.uuid4())


def _is_job_id(job_id: str) -> bool:
    try:
        return str(uuid.UUID(job_id)) == job_id
    except ValueError:
        return False


def get_job(session: Session, tenant: str, job_id: str) -> Job:
    """The tenant's job, or NotFound: another tenant's job is indistinguishable from a missing one."""
    # Ids are UUIDs: anything else is missing without a query (and NUL never reaches PostgreSQL).
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant)) if _is_job_id(job_id) else None
    if job is None:
        raise NotFound(f"no job {job_id!r}; list your jobs with GET /v1/jobs")
    return job


def job_by_token(session: Session, tenant: str, client_request_token: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.tenant == tenant, Job.client_request_token == client_request_token)
    )


def reserved_frames(sample_fps: float, max_duration_s: float) -> int:
    """The most frames sampling at `sample_fps` takes from media of at most `max_duration_s`: one at each k/fps
    while k/fps < duration (worker.media.plan.plan_frames), the first at 0."""
    return max(1, math.ceil(max_duration_s * sample_fps))


def create_job(session: Session, *, tenant: str, queue: str, source_uri: str, sample_fps: float,
               tasks_per_tenant: int, frames_reserved: int, client_request_token: str | None = None,
               webhook_url: str | None = None, filename: str | None = None, stored_media_key: str | None = None,
               job_id: str | None = None, stored_media_bytes: int | None = None,
               quota: TenantQuota | None = None) -> tuple[Job, bool]:
    """Inserts and commits a queued job, then dispatches the tenant's waiting tasks; returns (job, created).

    A repeated `client_request_token` returns the tenant's existing job with created=False, also when two
    requests race (the unique constraint decides). The job's prepare is sent now when the tenant has fewer than
    `tasks_per_tenant` tasks sent and unfinished on `queue`, else as they finish (fervid.dispatch); a broker that
    is down leaves it waiting, logged, not raised. The job reserves `frames_reserved` of its tenant's frames per day
    until it is prepared. A tenant past its `quota` is refused with a 429; the check and the insert hold the
    tenant's lock, so concurrent submissions cannot pass it together.
    """
    if client_request_token is not None and (existing := job_by_token(session, tenant, client_request_token)):
        return existing, False
    if quota is not None:
        lock_for_transaction(session, f"quota:{tenant}")
        refuse_past_quota(session, tenant, quota, stored_media_bytes or 0, frames_reserved)
    job = Job(id=job_id or new_job_id(), tenant=tenant, queue=queue, status=JobStatus.queued, source_uri=source_uri,
              stored_media_key=stored_media_key, stored_media_bytes=stored_media_bytes, filename=filename,
              sample_fps=sample_fps, frames_reserved=frames_reserved,
              client_request_token=client_request_token, webhook_url=webhook_url, warnings=[],
              created_at=utc_now())
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = job_by_token(session, tenant, client_request_token) if client_request_token else None
        if existing is None:
            raise
        return existing, False
    dispatch(session, tenant, queue, tasks_per_tenant)
    session.refresh(job)
    return job, True


# Retry-After for a submission that would fit once the tenant's unprepared jobs are prepared.
RESERVATIONS_RETRY_AFTER_S = 30
# The frames a job counts against its tenant's day: what it samples once prepared, until then what it reserved;
# nothing for a job that ended (failed, cancelled) before it was prepared, whose reservation is released.
_FRAMES_COUNTED = case(
    (and_(Job.frames_total.is_(None), Job.status.in_((JobStatus.failed, JobStatus.cancelled))), 0),
    else_=func.coalesce(Job.frames_total, Job.frames_reserved, 0))


@dataclass(frozen=True)
class TenantUsage:
    active_jobs: int
    stored_bytes: int  # uploads and annotated videos
    day_frames: int  # sampled, or reserved until prepared, by the jobs of the last 24 h (_FRAMES_COUNTED)
    day_reserved: int  # of those, reserved by jobs not prepared yet
    oldest_of_day: datetime | None


def tenant_usage(session: Session, tenant: str) -> TenantUsage:
    day_ago = utc_now() - timedelta(days=1)
    unprepared = and_(Job.frames_total.is_(None), Job.status.in_(ACTIVE_JOB_STATUSES))
    annotated = select(func.coalesce(func.sum(AnnotatedVideo.stored_bytes), 0)).join(Job).where(
        Job.tenant == tenant).scalar_subquery()
    active, stored, frames, reserved, oldest = session.execute(select(
        func.count().filter(Job.status.in_(ACTIVE_JOB_STATUSES)),
        func.coalesce(func.sum(Job.stored_media_bytes), 0) + annotated,
        func.coalesce(func.sum(_FRAMES_COUNTED).filter(Job.created_at >= day_ago), 0),
        func.coalesce(func.sum(Job.frames_reserved).filter(unprepared, Job.created_at >= day_ago), 0),
        func.min(Job.created_at).filter(Job.created_at >= day_ago),
    ).where(Job.tenant == tenant)).one()
    return TenantUsage(int(active or 0), int(stored or 0), int(frames or 0), int(reserved or 0), oldest)


def refuse_past_quota(session: Session, tenant: str, quota: TenantQuota, new_bytes: int, new_frames: int) -> None:
    """TooManyRequests (quota_exceeded) when the tenant's active jobs are at their limit, or its stored bytes or
    last day's frames would pass theirs with `new_bytes` and `new_frames` more. A check only: create_job holds the
    tenant's lock around it and the insert."""
    usage = tenant_usage(session, tenant)
    if usage.active_jobs >= quota.max_active_jobs:
        raise TooManyRequests(f"you have {usage.active_jobs} queued or running jobs, the most allowed "
                              "(FERVID_MAX_ACTIVE_JOBS); submit again when one finishes, or cancel one",
                              retry_after_s=30, code=QUOTA_EXCEEDED)
    if usage.stored_bytes + new_bytes > quota.max_stored_bytes:
        raise TooManyRequests(f"your uploads would take {(usage.stored_bytes + new_bytes) / (1 << 20):.0f} MB, past "
                              f"the {quota.max_stored_bytes >> 20} MB allowed (FERVID_MAX_STORED_MB); delete jobs "
                              "you no longer need", retry_after_s=3600, code=QUOTA_EXCEEDED)
    if usage.day_frames + new_frames > quota.max_frames_per_day:
        # Room comes back as jobs are prepared (a reservation shrinks to the frames sampled), or when the oldest of
        # the last day's jobs is a day old.
        if usage.day_frames - usage.day_reserved + new_frames <= quota.max_frames_per_day:
            wait_s = float(RESERVATIONS_RETRY_AFTER_S)
        elif usage.oldest_of_day is not None:
            wait_s = (as_utc(usage.oldest_of_day) + timedelta(days=1) - utc_now()).total_seconds()
        else:
            wait_s = 60.0
        raise TooManyRequests(f"your jobs of the last 24 h sample or reserve {usage.day_frames} frames, and this one "
                              f"may sample {new_frames}: past the {quota.max_frames_per_day} allowed "
                              "(FERVID_MAX_FRAMES_PER_DAY). Until it is prepared a job reserves max_duration_s (by "
                              "default FERVID_RESERVED_DURATION_S) x sample_fps frames: declare a shorter "
                              "max_duration_s", retry_after_s=max(1, int(wait_s) + 1), code=QUOTA_EXCEEDED)


def room_for_more_frames(session: Session, job: Job, frames_total: int, quota: TenantQuota) -> bool:
    """Whether the job's tenant has room in its day for `frames_total`, more than the job reserved: prepare asks,
    holding the tenant's quota lock until it records frames_total in the same transaction."""
    lock_for_transaction(session, f"quota:{job.tenant}")
    more = frames_total - (job.frames_reserved or 0)
    return tenant_usage(session, job.tenant).day_frames + more <= quota.max_frames_per_day


def frames_done_by_job(session: Session, job_ids: Sequence[str]) -> dict[str, int]:
    """SUM(segments.frames_done) per job, in one query for a whole page of jobs."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Segment.job_id, func.coalesce(func.sum(Segment.frames_done), 0))
        .where(Segment.job_id.in_(job_ids))
        .group_by(Segment.job_id)
    )
    return {job_id: int(done) for job_id, done in rows}


def job_to_dict(session: Session, job: Job, frames_done: int | None = None) -> dict[str, Any]:
    """The job as the API shows it (JSON-ready: ISO 8601 UTC times). Pass `frames_done` when it is known."""
    if frames_done is None:
        frames_done = frames_done_by_job(session, [job.id]).get(job.id, 0)
    return {
        "job_id": job.id,
        "status": job.status,
        "progress": {"frames_done": frames_done, "frames_total": job.frames_total},
        "media": {"kind": job.media_kind, "duration_ms": job.duration_ms, "fps": job.fps, "width": job.width,
                  "height": job.height, "frame_count": job.frame_count},
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
        "warnings": list(job.warnings or []),
        "model": {"name": job.model_name, "version": job.model_version, "backend": job.model_backend,
                  "precision": job.model_precision, "detector": job.model_detector},
        "sample_fps": job.sample_fps,
        "filename": job.filename,
        "created_at": iso_utc(job.created_at),
        "started_at": iso_utc(job.started_at),
        "finished_at": iso_utc(job.finished_at),
    }


def list_jobs(session: Session, tenant: str, *, limit: int, status: str | None = None,
              before: tuple[datetime, str] | None = None) -> tuple[list[Job], tuple[datetime, str] | None]:
    """The tenant's jobs, newest first, keyset-paginated on (created_at, id); returns (jobs, next key)."""
    query = select(Job).where(Job.tenant == tenant)
    if status is not None:
        query = query.where(Job.status == status)
    if before is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(as_utc(before[0]), before[1]))
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs[:limit], (as_utc(last.created_at), last.id)


def cancel_job(session: Session, job: Job) -> Job:
    """queued, preparing or running -> cancelled (lifecycle.cancel); a finished job is a Conflict. The move is one
    guarded UPDATE, so a worker finishing the job at the same moment wins or loses cleanly; its webhook is owed in
    the same transaction and sent once it commits."""
    if not lifecycle.cancel(session, job.id):
        session.rollback()
        session.refresh(job)
        raise Conflict(f"job {job.id} is already {job.status}; only queued, preparing or running jobs can be "
                       "cancelled")
    session.commit()
    session.refresh(job)
    return job


def delete_job(session: Session, job: Job, storage: Storage, *, action: str = audit.JOB_DELETED) -> bool:
    """Deletes the job's rows (segments, frames, faces and tracks cascade) and then its stored files (its upload and
    the stills workers rendered, all under its id); the audit log records `action` in the same transaction. False
    when another process deleted it first."""
    deleted = session.scalar(delete(Job).where(Job.id == job.id).returning(Job.id)
                             .execution_options(synchronize_session=False))
    if deleted is None:
        session.rollback()
        return False
    audit.record(session, action, tenant=job.tenant, job_id=job.id)
    session.commit()
    session.expunge(job)
    try:
        storage.delete_folder(job.id)
    except Exception:  # the rows are gone either way; an orphaned file must not turn the delete into an error
        log.exception("job %s: deleted, but its stored files could not be removed", job.id)
    return True
