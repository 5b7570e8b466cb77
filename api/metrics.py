"""GET /metrics: what an operator scales and alerts on, in Prometheus's text format.

Jobs and segments by status, the age of the oldest queued job and the tasks waiting for their tenant's window
come from the database; messages waiting in each queue that active jobs use come from the broker (any transport
Celery speaks). Off unless
FERVID_METRICS_TOKEN is set; the scraper then sends it as a bearer token.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select

from api.auth import SettingsDep, bearer
from api.schemas import ErrorBody
from fervid.db import session_scope
from fervid.dispatch import waiting_tasks
from fervid.errors import NOT_CONFIGURED, FervidError, Unauthorized
from fervid.lifecycle import ACTIVE_JOB_STATUSES, JobStatus, SegmentStatus
from fervid.queue import celery_app
from fervid.tables import Job, Segment
from fervid.utc import as_utc, utc_now

log = logging.getLogger(__name__)
metrics = APIRouter(tags=["health"])
# Errors are JSON even where the route answers text/plain.
ERROR_JSON = {"content": {"application/json": {"schema": ErrorBody.model_json_schema()}}}


def require_metrics_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                          settings: SettingsDep) -> None:
    token = settings.metrics_token
    if not token:
        raise FervidError("metrics are off on this service (the operator has not set FERVID_METRICS_TOKEN)",
                          code=NOT_CONFIGURED, http_status=404)
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise Unauthorized("send FERVID_METRICS_TOKEN as 'Authorization: Bearer <token>'")


def _queue_lengths(queues: set[str]) -> dict[str, int]:
    """Messages waiting in each queue; a queue the broker does not know (yet) is left out."""
    lengths: dict[str, int] = {}
    with celery_app().connection_for_write() as connection:
        for queue in sorted(queues):
            try:
                # passive: only asks, never creates the queue
                declared = connection.default_channel.queue_declare(queue=queue, passive=True)
            except Exception as error:  # a missing queue is a channel error on RabbitMQ
                log.debug("no length for queue %s: %s", queue, error)
                continue
            lengths[queue] = int(declared.message_count)
    return lengths


def _render(jobs: dict[str, int], segments: dict[str, int], oldest_queued_s: float, waiting: int,
            queues: dict[str, int]) -> str:
    lines = ["# HELP fervid_jobs Jobs by status.", "# TYPE fervid_jobs gauge"]
    lines += [f'fervid_jobs{{status="{status}"}} {jobs.get(status, 0)}' for status in JobStatus]
    lines += ["# HELP fervid_segments Segments (one task each) by status.", "# TYPE fervid_segments gauge"]
    lines += [f'fervid_segments{{status="{status}"}} {segments.get(status, 0)}' for status in SegmentStatus]
    lines += ["# HELP fervid_oldest_queued_job_age_seconds How long the oldest queued job has waited (0: none).",
              "# TYPE fervid_oldest_queued_job_age_seconds gauge",
              f"fervid_oldest_queued_job_age_seconds {oldest_queued_s:.3f}"]
    lines += ["# HELP fervid_waiting_tasks Prepare and segment tasks not sent yet: their tenant's "
              "FERVID_TASKS_PER_TENANT are in flight.", "# TYPE fervid_waiting_tasks gauge",
              f"fervid_waiting_tasks {waiting}"]
    lines += ["# HELP fervid_queue_messages Messages waiting in the broker, per queue that active jobs use.",
              "# TYPE fervid_queue_messages gauge"]
    lines += [f'fervid_queue_messages{{queue="{queue}"}} {count}' for queue, count in queues.items()]
    return "\n".join(lines) + "\n"


@metrics.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_metrics_token)],
             summary="Prometheus metrics: jobs, segments, queue lengths (needs FERVID_METRICS_TOKEN)",
             responses={401: {**ERROR_JSON, "description": "no FERVID_METRICS_TOKEN, or not the right one"},
                        404: {**ERROR_JSON, "description": "metrics are off (no FERVID_METRICS_TOKEN)"}})
def get_metrics(settings: SettingsDep) -> PlainTextResponse:
    with session_scope() as session:
        jobs = {str(status): int(count) for status, count in
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()}
        segments = {str(status): int(count) for status, count in
                    session.execute(select(Segment.status, func.count()).group_by(Segment.status)).all()}
        oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.queued))
        waiting = waiting_tasks(session)
        queues = set(session.scalars(select(Job.queue).where(Job.status.in_(ACTIVE_JOB_STATUSES)).distinct()).all())
    oldest_queued_s = max(0.0, (utc_now() - as_utc(oldest)).total_seconds()) if oldest is not None else 0.0
    queues.add(settings.queue)
    return PlainTextResponse(_render(jobs, segments, oldest_queued_s, waiting, _queue_lengths(queues)),
                             media_type="text/plain; version=0.0.4")
