"""Annotated videos: a succeeded job's media with its faces, track ids and emotions drawn on every frame.

The API never renders one (it would decode and encode a whole video in a request thread, outside the decoders'
isolation and limits). Asked for it, the API records the request here and sends a worker the render
(worker/annotate.py) on the job's queue, answering 202 until the row says ready; the worker writes the MP4 into the
job's folder of the media store, which is deleted with the job, and its size counts in the tenant's stored bytes.

The row's life: `request` makes it `rendering` with a new token (also when a render's worker stopped beating its
heartbeat); only the holder of the token may beat, finish or fail it, so a render taken over never overwrites its
successor. `ready` and `failed` are final: the same job's results always draw the same video.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, select, update
from sqlalchemy.orm import Session

from fervid.db import lock_for_transaction, session_scope
from fervid.errors import QUOTA_EXCEEDED, TooManyRequests
from fervid.jobs import tenant_usage
from fervid.lifecycle import database_now
from fervid.tables import AnnotatedVideo, Job
from fervid.utc import as_utc

# A tenant's renders at once: each takes a worker process for about as long as its job's analysis.
MAX_RENDERS_PER_TENANT = 2
RENDERS_RETRY_AFTER_S = 30
# The MP4 is at most this many times its source's duration in megabytes-per-second: x264 at its CRF stays far under
# it for any frame size the decoders accept, so a file past it is a fault, not a video.
MAX_MB_PER_S = 8


class RenderStatus(StrEnum):
    rendering = "rendering"
    ready = "ready"
    failed = "failed"


def annotated_key(job_id: str) -> str:
    """The video's place in the media store: the job's folder, deleted with the job."""
    return f"{job_id}/annotated.mp4"


def render_limits_s(duration_ms: float | None) -> tuple[float, float]:
    """A render's soft and hard time limits: generous against its analysis, which samples a few frames a second,
    where a render decodes, paints and encodes every one."""
    soft_s = 300.0 + 10.0 * max(duration_ms or 0.0, 0.0) / 1000
    return soft_s, soft_s + 60.0


def max_annotated_bytes(duration_ms: float | None) -> int:
    return int((max(duration_ms or 0.0, 0.0) / 1000 + 10) * MAX_MB_PER_S) << 20


@dataclass(frozen=True)
class Render:
    """What the API answers from: the row as it is after `request`, and whether this request started a render."""

    status: RenderStatus
    token: str
    frames_done: int
    frames_total: int | None
    stored_uri: str | None
    error_code: str | None
    error_message: str | None
    started: bool  # True: send the render task with `token`


def _render(row: AnnotatedVideo, started: bool) -> Render:
    return Render(RenderStatus(row.status), row.token, row.frames_done, row.frames_total, row.stored_uri,
                  row.error_code, row.error_message, started)


def request(session: Session, job: Job, stale_after_s: float, max_stored_bytes: int) -> Render:
    """The job's render, started when there is none or when its worker went quiet for `stale_after_s`. A new one
    is refused (TooManyRequests) while its tenant has MAX_RENDERS_PER_TENANT rendering, or stores its bytes quota."""
    # Two first requests at once would both insert: the second waits here, then finds the first's row.
    lock_for_transaction(session, f"annotated-video:{job.id}")
    now = database_now(session)
    row = session.get(AnnotatedVideo, job.id)
    if row is not None and not _quiet(row, now, stale_after_s):
        return _render(row, started=False)
    _refuse_past_quota(session, job.tenant, now, stale_after_s, max_stored_bytes)
    token = uuid.uuid4().hex
    if row is None:
        row = AnnotatedVideo(job_id=job.id, status=RenderStatus.rendering, token=token, requested_at=now,
                             heartbeat_at=None, frames_done=0)
        session.add(row)
    else:
        row.token, row.requested_at, row.heartbeat_at, row.frames_done = token, now, None, 0
    session.flush()
    return _render(row, started=True)


def _quiet(row: AnnotatedVideo, now: Any, stale_after_s: float) -> bool:
    """A render whose worker has not been heard of for stale_after_s: its message or its worker was lost."""
    if row.status != RenderStatus.rendering:
        return False
    last = as_utc(row.heartbeat_at or row.requested_at)  # SQLite gives its times back without their zone
    return bool(last < now - timedelta(seconds=stale_after_s))


def _refuse_past_quota(session: Session, tenant: str, now: Any, stale_after_s: float,
                       max_stored_bytes: int) -> None:
    heard_since = now - timedelta(seconds=stale_after_s)
    rendering = session.scalar(select(func.count()).select_from(AnnotatedVideo).join(Job).where(
        Job.tenant == tenant, AnnotatedVideo.status == RenderStatus.rendering,
        func.coalesce(AnnotatedVideo.heartbeat_at, AnnotatedVideo.requested_at) >= heard_since))
    if (rendering or 0) >= MAX_RENDERS_PER_TENANT:
        raise TooManyRequests(f"{rendering} annotated videos of yours are being rendered, the most at once; ask "
                              "again when one is ready", retry_after_s=RENDERS_RETRY_AFTER_S, code=QUOTA_EXCEEDED)
    stored = tenant_usage(session, tenant).stored_bytes
    if stored >= max_stored_bytes:
        raise TooManyRequests(f"your uploads and annotated videos take {stored / (1 << 20):.0f} MB, the "
                              f"{max_stored_bytes >> 20} MB allowed (FERVID_MAX_STORED_MB); delete jobs you no "
                              "longer need", retry_after_s=3600, code=QUOTA_EXCEEDED)


# The worker's moves: each applies only while the row is rendering under the caller's token.

def _held(job_id: str, token: str) -> Any:
    return and_(AnnotatedVideo.job_id == job_id, AnnotatedVideo.token == token,
                AnnotatedVideo.status == RenderStatus.rendering)


def _write(job_id: str, token: str, **values: Any) -> bool:
    """Updates the row with `values`, its worker heard of now; False when the render is not the token's."""
    with session_scope() as session:
        statement = update(AnnotatedVideo).where(_held(job_id, token)).values(heartbeat_at=database_now(session),
                                                                               **values)
        return bool(cast(CursorResult[Any], session.execute(
            statement.execution_options(synchronize_session=False))).rowcount)


def heartbeat(job_id: str, token: str, frames_done: int, frames_total: int | None) -> bool:
    """False once the render is no longer this worker's (the job was deleted, or the render taken over)."""
    return _write(job_id, token, frames_done=frames_done, frames_total=frames_total)


def finish(job_id: str, token: str, stored_uri: str, stored_bytes: int) -> bool:
    return _write(job_id, token, status=RenderStatus.ready, stored_uri=stored_uri, stored_bytes=stored_bytes)


def fail(job_id: str, token: str, code: str, message: str) -> bool:
    return _write(job_id, token, status=RenderStatus.failed, error_code=code, error_message=message)


def holds(session: Session, job_id: str, token: str) -> bool:
    return session.scalar(select(AnnotatedVideo.job_id).where(_held(job_id, token))) is not None

