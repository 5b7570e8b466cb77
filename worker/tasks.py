"""Celery tasks: thin, they take ids and call worker.runner, which runs the work under fervid.lifecycle.

The settings enter here once per worker: `fervid worker` calls `configure_worker` before the pool forks, so every
forked child inherits the same settings (with the inference thread split for its process) and builds its
analyzer from them when it starts.

The main process forks the pool, so it never loads the pipeline or an ML runtime: they start thread pools (OpenBLAS,
ONNX Runtime and OpenCV at import, OpenCV's workers at first use) whose locks a forked child inherits without the
threads that would release them; a pool process hung for ever in `cv2.setNumThreads` that way. The pipeline is
imported by the pool processes, when they start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init

from fervid import lifecycle
from fervid.db import get_engine
from fervid.dispatch import dispatch_for_job
from fervid.errors import INTERNAL_ERROR, PROCESSING_FAILED
from fervid.queue import ANNOTATED_TASK, PREPARE_TASK, SEGMENT_TASK, STILL_TASK, WEBHOOK_TASK, celery_app
from fervid.settings import Settings, get_settings
from fervid.webhooks import RETRY_DELAYS_S, Delivery, deliver
from fervid.worker_status import WorkerStatus, start_publishing
from models.detector_files import find_or_fetch_yunet
from worker.layout import WorkerLayout, usable_cores
from worker.reaper import start_reaper_thread
from worker.transient import TRANSIENT

if TYPE_CHECKING:
    from worker import pipeline

log = logging.getLogger(__name__)
app = celery_app()

RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True,
         "max_retries": 12}


class _ThisWorker:
    """This process's share of the worker: the layout (inherited by forked children) and the child's analyzer."""

    layout: WorkerLayout | None = None
    analyzer: pipeline.Analyzer | None = None


def configure_worker(layout: WorkerLayout) -> None:
    """Called by `fervid worker` in the parent, before Celery forks its pool."""
    _ThisWorker.layout = layout


def _layout() -> WorkerLayout:
    if _ThisWorker.layout is None:  # started by `celery worker` directly: one process's view of the settings
        _ThisWorker.layout = WorkerLayout.split(get_settings(), usable_cores(), 1)
    return _ThisWorker.layout


def _settings() -> Settings:
    return _layout().settings


def _analyzer() -> pipeline.Analyzer:
    if _ThisWorker.analyzer is None:
        from worker import pipeline

        _ThisWorker.analyzer = pipeline.build_analyzer(_settings())
    return _ThisWorker.analyzer


# Past the soft time limit the task fails its job; this much later the pool kills the process that ignored it.
HARD_LIMIT_GRACE_S = 60.0
WEBHOOK_SLACK_S = 10.0  # past the webhook's own deadline: the job lookup and signing


@worker_init.connect
def _fetch_detector(**_: Any) -> None:
    # In the main process, before the pool starts: its processes then find YuNet cached (or this attempt's failure)
    # instead of each downloading within the few seconds Celery gives a pool process to come up.
    find_or_fetch_yunet(_settings())


@worker_init.connect
def _set_time_limits(**_: Any) -> None:
    # The pool (in the main process) reads the limits off the task when it hands a message to a child.
    settings = _settings()
    for task, soft_s in ((prepare_job, settings.prepare_soft_limit_s()),
                         (process_segment, settings.segment_soft_limit_s()),
                         (send_job_webhook, settings.webhook_deadline_s + WEBHOOK_SLACK_S),
                         (render_frame_still, settings.segment_soft_limit_s())):
        task.soft_time_limit = soft_s
        task.time_limit = soft_s + HARD_LIMIT_GRACE_S


@worker_process_init.connect
def _load_models(**_: Any) -> None:
    # Parent and child must never share a connection: should the main process have opened any, they are dropped here
    # without closing them (closing would end the parent's).
    get_engine().dispose(close=False)
    layout = _layout()
    log.info("inference threads: %d (of %d usable cores, concurrency %d)", layout.settings.inference_threads,
             layout.usable_cores, layout.concurrency)

    _analyzer()  # once per worker process, before its first task
    start_publishing(_worker_status(_analyzer()), _settings().reaper_interval_s)
    # Here, not in the main process: a thread there could hold a lock (logging's, a connection pool's) at the moment
    # Celery forks a replacement pool process, which would then wait on it for ever. Reapers claim their rows
    # atomically, so one per pool process is safe.
    start_reaper_thread(_settings())


def _worker_status(analyzer: pipeline.Analyzer) -> WorkerStatus:
    """What this process runs, as /readyz shows it."""

    from worker import runner

    model = analyzer.model_info
    return WorkerStatus(name=runner.worker_name(), detector=model.detector, detector_reason=analyzer.detector.reason,
                        backend=model.backend, precision=model.precision, model_name=model.name,
                        model_version=model.version)


def _fail_unexpected(job_id: str, error: Exception) -> None:
    log.exception("job %s: unexpected error", job_id)
    lifecycle.fail_job(job_id, INTERNAL_ERROR, f"the worker hit an unexpected error ({type(error).__name__}); "
                       "retry the job, and report it if it happens again")


def _fail_slow(job_id: str, what: str, limit_s: float) -> None:
    log.warning("job %s: %s passed its soft time limit of %.0f s", job_id, what, limit_s)
    lifecycle.fail_job(job_id, PROCESSING_FAILED, f"{what} took longer than its limit of {limit_s:.0f} s; send "
                       "a shorter or re-encoded copy of the media")


@contextmanager
def _failing_job(job_id: str, what: str, soft_limit_s: float) -> Iterator[None]:
    """Ends the job for an error the runner does not: past the soft time limit, or unexpected. A transient error
    raises on, for the task's retry."""
    try:
        yield
    except TRANSIENT:
        raise
    except SoftTimeLimitExceeded:
        _fail_slow(job_id, what, soft_limit_s)
    except Exception as error:
        _fail_unexpected(job_id, error)


@app.task(name=PREPARE_TASK, bind=True, **RETRY)
def prepare_job(self: Task, job_id: str) -> None:

    from worker import runner

    settings = _settings()
    with _failing_job(job_id, "fetching and probing the media", settings.prepare_soft_limit_s()):
        runner.prepare(job_id, self.request.id, _analyzer().model_info, settings,
                       retrying=bool(self.request.retries))
    # However it ended, the tenant may have room now: its next waiting tasks (this job's segments first) go out.
    dispatch_for_job(job_id, settings.tasks_per_tenant)


@app.task(name=SEGMENT_TASK, bind=True, **RETRY)
def process_segment(self: Task, job_id: str, index: int) -> None:

    from worker import runner

    settings = _settings()
    with _failing_job(job_id, f"segment {index}", settings.segment_soft_limit_s()):
        runner.run_segment(job_id, index, self.request.id, _analyzer(), settings,
                           retrying=bool(self.request.retries))
    dispatch_for_job(job_id, settings.tasks_per_tenant)  # this task's room, to the tenant's next waiting task


@app.task(name=WEBHOOK_TASK)
def send_job_webhook(job_id: str, event_id: str) -> None:
    """One attempt at an owed event (fervid.lifecycle's outbox), recorded there; a failed one is due again after the
    next of RETRY_DELAYS_S and sent by a reaper, so a flushed broker loses no retry."""
    if lifecycle.webhook_owed(event_id):
        delivery = deliver(job_id, event_id, _settings())
        lifecycle.record_webhook_attempt(event_id, None if delivery is Delivery.failed else delivery.value,
                                         RETRY_DELAYS_S)


@app.task(name=STILL_TASK, **RETRY)
def render_frame_still(job_id: str, frame_index: int) -> None:
    """A viewer's still: one frame, decoded as a segment decodes it (from its restart point, under the decoder limits;
    a still's decode costs at most a segment's)."""
    from worker.still_render import record_failure, render_still

    settings = _settings()
    try:
        render_still(job_id, frame_index, settings, cpu_s=settings.segment_soft_limit_s())
    except SoftTimeLimitExceeded:
        record_failure(job_id, frame_index, PROCESSING_FAILED, f"decoding frame {frame_index} took longer than its "
                       f"limit of {settings.segment_soft_limit_s():.0f} s", settings)


@app.task(name=ANNOTATED_TASK, bind=True, **RETRY)
def render_annotated_video(self: Task, job_id: str, token: str) -> None:
    """An annotated video (fervid/annotated.py): its time limits come with the message, from the video's duration."""
    from worker.annotate import fail_slow, render_job_video

    try:
        render_job_video(job_id, token, _settings(), threads=_settings().inference_threads + 1)
    except SoftTimeLimitExceeded:
        fail_slow(job_id, token, self.request.timelimit[1] or 0.0)
