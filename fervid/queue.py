"""The Celery application: broker settings and task names, shared by the API (which only sends) and workers."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from fervid.settings import get_settings

if TYPE_CHECKING:
    from celery import Celery

PREPARE_TASK = "fervid.prepare_job"
SEGMENT_TASK = "fervid.process_segment"
WEBHOOK_TASK = "fervid.send_webhook"
STILL_TASK = "fervid.render_still"
ANNOTATED_TASK = "fervid.render_annotated"

# Longer than any segment can take: Redis redelivers an unacknowledged message only after this.
VISIBILITY_TIMEOUT_S = 6 * 3600


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    """The process's Celery app, built once from the settings (a process-wide singleton)."""
    from celery import Celery  # here: `fervid analyze` and `fervid demo` run without a broker or its import

    settings = get_settings()
    app = Celery("fervid", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,  # a task is acknowledged after it ran, so a lost worker's task is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long tasks: never hoard messages another worker could run
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        task_default_queue=settings.queue,
        task_ignore_result=True,  # results live in the database, not the broker
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


# A sender facing a dead broker gives up fast: the job row is committed and the reaper re-sends it later.
SEND_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def send_prepare(job_id: str, queue: str) -> None:
    celery_app().send_task(PREPARE_TASK, args=[job_id], queue=queue,
                           retry_policy=SEND_RETRY_POLICY)


def send_segment(job_id: str, segment_index: int, queue: str) -> None:
    celery_app().send_task(SEGMENT_TASK, args=[job_id, segment_index], queue=queue,
                           retry_policy=SEND_RETRY_POLICY)


WEBHOOK_SUFFIX = ".webhooks"
STILLS_SUFFIX = ".stills"
# A job queue's side queues: a worker that serves the job queue serves these too (worker.serve.with_side_queues).
SIDE_SUFFIXES = (WEBHOOK_SUFFIX, STILLS_SUFFIX)


def webhook_queue(queue: str) -> str:
    """The queue of the webhooks of jobs on `queue`: its own, so slow receivers never wait behind analysis."""
    return f"{queue}{WEBHOOK_SUFFIX}"


def stills_queue(queue: str) -> str:
    """The queue of the frame stills of jobs on `queue`: its own, so a viewer's still never waits behind a backlog of
    segments (it still waits for a free worker process)."""
    return f"{queue}{STILLS_SUFFIX}"


def send_render_still(job_id: str, frame_index: int, queue: str) -> None:
    celery_app().send_task(STILL_TASK, args=[job_id, frame_index], queue=stills_queue(queue),
                           retry_policy=SEND_RETRY_POLICY)


def send_render_annotated(job_id: str, token: str, queue: str, soft_limit_s: float, hard_limit_s: float) -> None:
    """On the job queue itself: a render takes a worker process about as long as the job's analysis did. Its time
    limits go with the message (they follow the video's duration)."""
    celery_app().send_task(ANNOTATED_TASK, args=[job_id, token], queue=queue, soft_time_limit=soft_limit_s,
                           time_limit=hard_limit_s, retry_policy=SEND_RETRY_POLICY)


def send_webhook(job_id: str, event_id: str, queue: str) -> None:
    celery_app().send_task(WEBHOOK_TASK, args=[job_id, event_id], queue=webhook_queue(queue),
                           retry_policy=SEND_RETRY_POLICY)
