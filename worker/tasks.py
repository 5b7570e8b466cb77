"""Celery tasks: thin, they take ids and call the plain pipeline functions."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from celery import Task
from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import OperationalError as BrokerError

from fervid.errors import INTERNAL_ERROR
from fervid.queue import PREPARE_TASK, SEGMENT_TASK, celery_app, send_segment
from fervid.settings import get_settings
from fervid.webhooks import notify_finished
from worker import pipeline, record_store
from worker.reaper import start_reaper_thread

log = logging.getLogger(__name__)
app = celery_app()

# Errors that pass by themselves (a database restart, a dropped connection, a broker blip): retried with backoff.
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, redis.exceptions.ConnectionError,
             redis.exceptions.TimeoutError, BrokerError, ConnectionError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True,
         "max_retries": 12}


@worker_process_init.connect
def _load_models(**_: Any) -> None:
    pipeline.get_analyzer()  # once per worker process, before its first task


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    start_reaper_thread(get_settings().reaper_interval_s)


def _fail_unexpected(job_id: str, error: Exception) -> None:
    log.exception("job %s: unexpected error", job_id)
    record_store.fail_job(job_id, INTERNAL_ERROR, f"the worker hit an unexpected error ({type(error).__name__}); "
                          "retry the job, and report it if it happens again")
    notify_finished(job_id)


@app.task(name=PREPARE_TASK, bind=True, **RETRY)
def prepare_job(self: Task, job_id: str) -> None:
    try:
        indices = pipeline.prepare_job(job_id, pipeline.get_analyzer().model_info)
    except TRANSIENT:
        raise
    except Exception as error:
        _fail_unexpected(job_id, error)
        return
    if not indices:
        notify_finished(job_id)  # only a failed (or vanished) job gets here without segments
        return
    record_store.mark_enqueued(job_id, indices)
    job = pipeline.load_job(job_id)
    for index in indices:
        send_segment(job_id, index, job.queue if job else None)


@app.task(name=SEGMENT_TASK, bind=True, **RETRY)
def process_segment(self: Task, job_id: str, index: int) -> None:
    try:
        finished = pipeline.process_segment(job_id, index, pipeline.get_analyzer())
    except TRANSIENT:
        raise
    except Exception as error:
        _fail_unexpected(job_id, error)
        return
    if finished:
        notify_finished(job_id)
