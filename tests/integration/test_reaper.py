"""The reaper on the real Redis and databases: what it re-sends, what it leaves alone, many reapers at once."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import update

from fervid import lifecycle
from fervid.db import session_scope
from fervid.lifecycle import JobStatus, SegmentStatus
from fervid.queue import PREPARE_TASK, SEGMENT_TASK
from fervid.settings import get_settings
from fervid.tables import Job, Segment
from tests.integration.conftest import sent, wait_for
from tests.integration.test_record_store import load_job, make_job, process, started_job
from worker.reaper import ReapReport, reap_once, start_reaper_thread

pytestmark = pytest.mark.integration

LONG_AGO = timedelta(hours=1)


def set_segment(job_id: str, index: int, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(Segment).where(Segment.job_id == job_id, Segment.index == index).values(**values))


def test_reaper_resends_stale_and_lost_work_and_leaves_fresh_work_alone(queue: str, redis_url: str) -> None:
    # given a running job with a segment of each kind, a cancelled job with a stale segment, and queued jobs
    now = datetime.now(UTC)
    job_id, _ = started_job(segments=5)
    set_segment(job_id, 0, status=SegmentStatus.running, heartbeat_at=now - LONG_AGO, worker="dead:1",
                claim_token="dead:1")
    set_segment(job_id, 1, status=SegmentStatus.running, heartbeat_at=now, worker="alive:1", claim_token="alive:1")
    set_segment(job_id, 2, enqueued_at=now - LONG_AGO)
    set_segment(job_id, 3, enqueued_at=now)
    set_segment(job_id, 4, status=SegmentStatus.done, heartbeat_at=now - LONG_AGO)
    cancelled, _ = started_job(segments=1)
    set_segment(cancelled, 0, status=SegmentStatus.running, heartbeat_at=now - LONG_AGO)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == cancelled).values(status=JobStatus.cancelled))
    lost_job = make_job(enqueued_at=now - LONG_AGO)
    never_sent = make_job(created_at=now - LONG_AGO)  # waiting: the API died between committing and sending it
    make_job(enqueued_at=now)
    # when the reaper runs, and runs again right away
    first = reap_once(get_settings())
    second = reap_once(get_settings())
    # then the stale and the lost segments and the lost job were re-sent, and the waiting job sent, once
    assert first == ReapReport(stale_segments=1, lost_segments=1, queued_jobs=1, finished_jobs=0, dispatched=1)
    assert second == ReapReport()
    messages = sent(redis_url, queue)
    assert sorted(m for m in messages if m[0] == SEGMENT_TASK) == sorted([(SEGMENT_TASK, [job_id, 0]),
                                                                          (SEGMENT_TASK, [job_id, 2])])
    assert sorted(m for m in messages if m[0] == PREPARE_TASK) == sorted([(PREPARE_TASK, [lost_job]),
                                                                          (PREPARE_TASK, [never_sent])])
    # and the stale segment is pending again, so its old worker's next heartbeat tells it to stop
    assert lifecycle.segment_heartbeat(job_id, 0, "dead:1", 3) is False
    assert lifecycle.segment_heartbeat(job_id, 1, "alive:1", 3) is True
    assert lifecycle.claim_segment(job_id, 0, "alive:2", "alive:2", retrying=False, max_attempts=3,
                                   stale_after_s=60) is not None


def test_waiting_segments_are_sent_by_the_next_pass_as_far_as_their_tenants_window_allows(
        queue: str, redis_url: str) -> None:
    # given a job whose prepare created segments but died before dispatching them, and a window of 2 tasks
    job_id, _ = started_job(segments=3)
    settings = get_settings().model_copy(update={"tasks_per_tenant": 2})
    # when the reaper runs, and again
    first = reap_once(settings)
    second = reap_once(settings)
    # then the first pass sent the first two, and the third waits for one of them to finish
    assert (first, second) == (ReapReport(dispatched=2), ReapReport())
    assert sent(redis_url, queue) == [(SEGMENT_TASK, [job_id, 0]), (SEGMENT_TASK, [job_id, 1])]


def test_reaper_finishes_a_job_whose_last_worker_stored_but_did_not_finish(queue: str, redis_url: str) -> None:
    # given a running job whose segments are all stored (its finisher was lost)
    job_id, plans = started_job(segments=2)
    assert process(job_id, 0, plans[0]) and process(job_id, 1, plans[1])
    # when the reaper runs
    report = reap_once(get_settings())
    # then it finished the job, and nothing was re-sent
    assert report == ReapReport(finished_jobs=1)
    assert load_job(job_id).status == JobStatus.succeeded
    assert sent(redis_url, queue) == []


def test_many_reapers_at_once_send_each_stale_segment_once(queue: str, redis_url: str, database: str) -> None:
    # given a running job with many stale segments
    if database.startswith("sqlite"):
        pytest.skip("SQLite serialises writers; the concurrent case is PostgreSQL's")
    job_id, _ = started_job(segments=30)
    for index in range(30):
        set_segment(job_id, index, status=SegmentStatus.running, heartbeat_at=datetime.now(UTC) - LONG_AGO)
    barrier = threading.Barrier(4)
    reports: list[ReapReport] = []

    def reap() -> None:
        barrier.wait(timeout=30)
        reports.append(reap_once(get_settings()))

    # when four reapers run at the same moment
    threads = [threading.Thread(target=reap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # then every stale segment was re-sent exactly once, by one of them
    assert sum(report.stale_segments for report in reports) == 30 and len(reports) == 4
    segment_messages = [args for task, args in sent(redis_url, queue) if task == SEGMENT_TASK]
    assert sorted(index for _, index in segment_messages) == list(range(30))


def test_reaper_thread_survives_a_database_outage(queue: str, redis_url: str, database: str,
                                                   fervid_env: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from fervid.settings import get_settings

    # given a stale segment, and the database unreachable when the reaper thread starts
    job_id, _ = started_job(segments=1)
    set_segment(job_id, 0, status=SegmentStatus.running, heartbeat_at=datetime.now(UTC) - LONG_AGO)
    fervid_env.setenv("FERVID_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/unreachable")
    get_settings.cache_clear()
    caplog.set_level(logging.INFO, logger="worker.reaper")
    stop = start_reaper_thread(get_settings().model_copy(update={"reaper_interval_s": 0.2, "stale_after_s": 3.0}))
    try:
        # when the pass fails, and then the database is back
        wait_for(lambda: "reaper pass failed" in caplog.text, timeout=60)
        fervid_env.setenv("FERVID_DATABASE_URL", database)
        get_settings.cache_clear()
        back = time.monotonic()
        # then the thread carries on and re-sends the stale segment, but only once the database has answered for
        # FERVID_STALE_AFTER_S: heartbeats its outage kept from being written are not a dead worker's
        wait_for(lambda: sent(redis_url, queue), timeout=60, interval=0.05)
        assert time.monotonic() - back >= 2.5
    finally:
        stop.set()
    assert sent(redis_url, queue) == [(SEGMENT_TASK, [job_id, 0])]
    wait_for(lambda: "re-sent 1 stale" in caplog.text, timeout=30)


def test_reaper_resends_to_the_queue_of_each_job(queue: str, redis_url: str) -> None:
    # given a stale segment of a job that was submitted to another queue (e.g. the gpu one)
    other_queue = f"{queue}-gpu"
    job_id, _ = started_job(segments=1)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(queue=other_queue))
    set_segment(job_id, 0, status=SegmentStatus.running, heartbeat_at=datetime.now(UTC) - LONG_AGO)
    try:
        # when the reaper (whose own queue is `queue`) runs
        reap_once(get_settings())
        # then the segment went to the job's queue, not the reaper's
        assert sent(redis_url, other_queue) == [(SEGMENT_TASK, [job_id, 0])]
        assert sent(redis_url, queue) == []
    finally:
        redis.Redis.from_url(redis_url).delete(other_queue)


def test_reaper_fails_work_that_had_its_attempts_and_resends_a_stalled_prepare(queue: str, redis_url: str) -> None:
    # given a running job whose stale segment was claimed FERVID_MAX_ATTEMPTS times, and two jobs whose prepare
    # stopped heartbeating: one with attempts left, one without
    now = datetime.now(UTC)
    max_attempts = get_settings().max_attempts
    crashing, _ = started_job(segments=2)
    set_segment(crashing, 0, status=SegmentStatus.running, heartbeat_at=now - LONG_AGO, attempts=max_attempts)
    stalled = make_job(status=JobStatus.preparing, heartbeat_at=now - LONG_AGO, prepare_attempts=1)
    spent = make_job(status=JobStatus.preparing, heartbeat_at=now - LONG_AGO, prepare_attempts=max_attempts)
    alive = make_job(status=JobStatus.preparing, heartbeat_at=now, prepare_attempts=max_attempts)
    # when the reaper runs
    report = reap_once(get_settings())
    # then the spent work failed its jobs with processing_failed, and the stalled prepare is queued again
    assert report == ReapReport(stale_prepares=1, exhausted_jobs=2)
    for job_id in (crashing, spent):
        failed = load_job(job_id)
        assert (failed.status, failed.error_code) == (JobStatus.failed, "processing_failed")
        assert f"{max_attempts} attempts" in (failed.error_message or "")
    assert load_job(stalled).status == JobStatus.queued
    assert load_job(alive).status == JobStatus.preparing
    # and a prepare claims the queued job once, counting its attempt
    assert lifecycle.claim_prepare(stalled, "delivery-1", retrying=False, max_attempts=3, stale_after_s=60) is True
    assert lifecycle.claim_prepare(stalled, "delivery-2", retrying=False, max_attempts=3, stale_after_s=60) is False
    assert load_job(stalled).prepare_attempts == 2
