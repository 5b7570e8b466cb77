"""A job's work as a worker runs it: its prepare and its segments, each under a claim token and moved through
fervid.lifecycle, with heartbeats that also stop the work within one of them once its job is cancelled or its claim
is taken over.

Celery tasks (worker/tasks.py) and the in-process `fervid analyze` both call these; the analysis itself, without a
database, is worker.pipeline.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fervid import lifecycle
from fervid.db import session_scope
from fervid.errors import MediaError
from fervid.media_store import Downloads, local_copy
from fervid.sampling import PlannedFrame
from fervid.settings import Settings
from fervid.stopping import Stopped, StopSignal
from fervid.tables import Job
from worker import record_store
from worker.media.isolated import DecoderLimits, IsolatedDecode, probe_isolated
from worker.media.limits import MediaLimits
from worker.media.plan import MediaInfo, split_plan
from worker.records import ModelInfo
from worker.transient import TRANSIENT

if TYPE_CHECKING:
    from worker.pipeline import Analyzer

log = logging.getLogger(__name__)

# How often running work writes its heartbeat and progress, which is also how soon it sees that it must stop.
HEARTBEAT_INTERVAL_S = 1.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def heartbeats(beat: Callable[[], bool], interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[StopSignal]:
    """Calls `beat` every `interval_s` from a thread while the block runs; the signal is set the first time it
    answers False (the work is no longer this worker's to do). A beat that fails (a database blip) is tried again."""
    stop = StopSignal()
    done = threading.Event()

    def run() -> None:
        while not done.wait(interval_s):
            try:
                alive = beat()
            except Exception:
                log.warning("heartbeat failed; trying again", exc_info=True)
                continue
            if not alive:
                stop.set()
                return

    thread = threading.Thread(target=run, name="fervid-heartbeat", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        done.set()
        thread.join()


def load_job(job_id: str) -> Job | None:
    with session_scope() as session:
        return session.get(Job, job_id)


def job_media(job: Job, settings: Settings, operator_source: bool,
              stop: StopSignal | None = None) -> AbstractContextManager[Path]:
    """The job's media as a local path, read inside its tenant's locations (FERVID_FILE_URI_ROOTS ...) unless
    `operator_source`: `fervid analyze` reads the file its operator named."""
    fence = None if operator_source else settings.job_source_fence(job)
    return local_copy(job.source_uri, Downloads.from_settings(settings), cache_key=job.id, fence=fence, stop=stop)


def probe_segments(path: Path, job: Job, settings: Settings,
                   stop: StopSignal | None = None) -> tuple[MediaInfo, list[list[PlannedFrame]]]:
    decoder = DecoderLimits(settings.decode_memory_mb, settings.prepare_soft_limit_s())
    info, plan = probe_isolated(path, job.sample_fps, MediaLimits.from_settings(settings), decoder, stop)
    return info, split_plan(plan, settings.segment_seconds * 1000.0)


@contextmanager
def _letting_go(release: Callable[[], None]) -> Iterator[None]:
    """Lets go of the claim however the block ends, except by a transient error: the task's retry keeps it."""
    try:
        yield
    except TRANSIENT:
        raise
    except BaseException:
        release()
        raise
    release()


def prepare(job_id: str, token: str, model: ModelInfo, settings: Settings, *, retrying: bool = False,
            operator_source: bool = False) -> list[int]:
    """Claims the job's prepare for the delivery `token`, fetches and probes its media, and moves it to running with
    its segments (record_store.start_job); returns the segments to process. Bad media fails the job with its code; a
    cancel stops the download or the probe within a heartbeat."""
    if not lifecycle.claim_prepare(job_id, token, retrying=retrying, max_attempts=settings.max_attempts,
                                   stale_after_s=settings.stale_after_s):
        return []
    job = load_job(job_id)
    if job is None:
        return []
    with _letting_go(lambda: lifecycle.release_prepare(job_id, token)):
        try:
            with heartbeats(lambda: lifecycle.prepare_heartbeat(job_id, token)) as stop, \
                    job_media(job, settings, operator_source, stop) as path:
                media, segments = probe_segments(path, job, settings, stop)
        except Stopped:
            log.info("job %s: prepare stopped (cancelled, or taken over)", job_id)
            return []
        except MediaError as error:
            log.info("job %s failed: %s: %s", job_id, error.code, error.message)
            lifecycle.fail_job(job_id, error.code, error.message)
            return []
        return record_store.start_job(job_id, token, media, segments, model,
                                      None if operator_source else settings.tenant_quota())


def run_segment(job_id: str, index: int, token: str, analyzer: Analyzer, settings: Settings, *,
                retrying: bool = False, on_frames: Callable[[int], None] | None = None,
                operator_source: bool = False) -> None:
    """Claims one segment for the delivery `token`, analyzes it, stores its results and finishes the job when it
    was the last; a cancel or a takeover stops its decoding within a heartbeat and nothing is stored.

    `on_frames(frames_done)` reports this segment's progress (the CLI's progress bar)."""
    job = load_job(job_id)
    if job is None or job.status != lifecycle.JobStatus.running:
        return
    warnings: list[str] = []
    frames_done = 0

    def on_progress(done: int) -> bool:
        nonlocal frames_done
        frames_done = done
        if on_frames is not None:
            on_frames(done)
        return not stop.is_set()

    try:
        # The media is fetched before the claim: a long download must not look like a dead worker to the reaper.
        with job_media(job, settings, operator_source) as path:
            plan = lifecycle.claim_segment(job_id, index, token, worker_name(), retrying=retrying,
                                           max_attempts=settings.max_attempts, stale_after_s=settings.stale_after_s)
            if plan is None:
                # Nothing to do; a redelivered segment that is done: finish the job in case its storer died first.
                record_store.finish_job_if_complete(job_id)
                return
            with _letting_go(lambda: lifecycle.release_segment(job_id, index, token)):
                decoder = DecoderLimits(settings.decode_memory_mb, settings.segment_soft_limit_s())
                frames = IsolatedDecode(path, plan, warnings, settings.max_pixels, decoder)
                with heartbeats(lambda: lifecycle.segment_heartbeat(job_id, index, token, frames_done)) as stop, \
                        stop.waking(frames.cancel):
                    records = analyzer.analyze(frames, on_progress, warnings)
                if record_store.store_segment(job_id, index, token, records, warnings):
                    record_store.finish_job_if_complete(job_id)
    except Stopped:
        log.info("job %s: segment %d stopped (cancelled, or taken over)", job_id, index)
    except MediaError as error:
        lifecycle.fail_job(job_id, error.code, error.message)
