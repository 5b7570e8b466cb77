"""A long job with many faces does not exhaust the API: pages bounded in faces, a plot of bounded points averaged in
SQL, the summary and plot cached when the job finishes, and a CSV export that holds no connection between batches;
on the real PostgreSQL and on SQLite, with results written through the record store as workers write them."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text, update

from fervid import results
from fervid.db import get_engine, session_scope
from fervid.labels import EMOTIONS
from fervid.tables import Job, ResultCache
from fervid.utc import utc_now
from tests.integration.test_api import ALICE, Api, running_api, submit_uri
from tests.integration.test_record_store import FRAME_MS, claim, make_plans, records, start, store
from worker import record_store

pytestmark = pytest.mark.integration

FACES = 12  # per frame: a crowd
SEGMENTS, FRAMES_PER_SEGMENT = 2, 150


@pytest.fixture(params=["postgresql", "sqlite"])
def api(request: pytest.FixtureRequest, fervid_env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Api]:
    url = str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))
    with running_api(url, redis_url, fervid_env) as running:
        yield running


def crowd(frame_index: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """FACES faces in a grid, each its own track, on every frame."""
    return [(i, (20 + 70 * (i % 8), 20 + 80 * (i // 8), 48, 56)) for i in range(FACES)]


def crowd_job(api: Api, finish: bool = True) -> str:
    """A job of SEGMENTS x FRAMES_PER_SEGMENT frames of FACES faces, stored (and finished) as workers do it."""
    job_id = str(submit_uri(api).json()["job_id"])
    plans = make_plans(SEGMENTS, FRAMES_PER_SEGMENT)
    assert start(job_id, plans) == list(range(SEGMENTS))
    for index, plan in enumerate(plans):
        assert claim(job_id, index, "test-worker") == plan
        stored_last = index == SEGMENTS - 1
        if stored_last and not finish:
            break
        assert store(job_id, index, records(plan, crowd), [])
    assert record_store.finish_job_if_complete(job_id) is finish
    return job_id


def timeline(api: Api, job_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of the timeline."""
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = api.client.get(f"/v1/jobs/{job_id}/timeline", headers=ALICE,
                                  params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages


def test_a_page_holds_a_bounded_number_of_faces_and_the_walk_gives_every_frame_once(api: Api) -> None:
    # given 300 frames of 12 faces: 3600 faces
    job_id = crowd_job(api)
    frames = SEGMENTS * FRAMES_PER_SEGMENT
    # when it is walked at the largest page of frames, whole and from 20 s on
    pages = timeline(api, job_id, limit=1000)
    later = timeline(api, job_id, limit=1000, from_ms=20_000)
    # then no page passes the face budget, each holds as many whole frames as fit, and every frame comes once
    per_page = results.MAX_PAGE_FACES // FACES
    for walk, first_ms in ((pages, 0.0), (later, 20_000.0)):
        items = [item for page in walk for item in page["items"]]
        assert all(sum(len(item["faces"]) for item in page["items"]) <= results.MAX_PAGE_FACES for page in walk)
        assert [len(page["items"]) for page in walk[:-1]] == [per_page] * (len(walk) - 1)
        expected = [k * 5 for k in range(frames) if k * FRAME_MS >= first_ms]
        assert [item["frame_index"] for item in items] == expected
        assert all(len(item["faces"]) == FACES for item in items)
    assert len(pages) == math.ceil(frames / per_page)
    # and a frame that alone has more faces than the budget comes whole, one frame a page
    with session_scope() as session:
        page, after = results.timeline_page(session, job_id, limit=50, max_faces=FACES - 1)
        assert [len(item["faces"]) for item in page] == [FACES] and after == 0
        page, after = results.timeline_page(session, job_id, limit=50, max_faces=FACES - 1, after_frame=after)
        assert [item["frame_index"] for item in page] == [5] and after == 5


def test_the_plot_averages_a_long_job_into_a_bounded_number_of_points_per_track(api: Api) -> None:
    # given the crowd job: 300 samples per track, 200 ms apart
    job_id = crowd_job(api)
    with session_scope() as session:
        faces = [(face["track_id"], item["timestamp_ms"], face["emotions"])
                 for item in results.full_timeline(session, job_id) for face in item["faces"]]
        # when its series are read for at most 100 points a track
        series, spacing_ms = results.plot_series(session, job_id, FRAME_MS, max_points=100)
        unbucketed, raw_spacing_ms = results.plot_series(session, job_id, FRAME_MS)
    # then each of the 8 tracks has at most 100 points, a whole number of sampling intervals apart
    assert len(series) == results.MAX_PLOT_TRACKS
    assert all(0 < len(track.timestamps_ms) <= 100 for track in series)
    bucket = spacing_ms / FRAME_MS
    assert bucket == round(bucket) > 1
    # and each point is the mean of its track's samples in its bucket, at the bucket's centre
    first_ms = min(timestamp for _, timestamp, _ in faces)
    for track in series:
        buckets: dict[int, list[dict[str, float]]] = {}
        for track_id, timestamp, emotions in faces:
            if track_id == track.track_id:
                buckets.setdefault(int((timestamp - first_ms) // spacing_ms), []).append(emotions)
        assert track.timestamps_ms == [first_ms + (b + 0.5) * spacing_ms for b in sorted(buckets)]
        for label in EMOTIONS:
            means = [sum(e[label] for e in buckets[b]) / len(buckets[b]) for b in sorted(buckets)]
            assert track.probabilities[label] == pytest.approx(means, abs=1e-9)
    # and a job shorter than the default bound keeps every sample
    assert raw_spacing_ms == FRAME_MS
    assert all(len(track.timestamps_ms) == SEGMENTS * FRAMES_PER_SEGMENT for track in unbucketed)


def cache_row(job_id: str) -> ResultCache | None:
    with session_scope() as session:
        return session.get(ResultCache, job_id)


def test_a_finished_jobs_summary_and_plot_are_computed_once_and_served_from_the_cache(api: Api) -> None:
    # given a job that succeeded, and one still running
    job_id, running = crowd_job(api), crowd_job(api, finish=False)
    # when the finished one's summary and plot are read
    summary = api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE)
    plot = api.client.get(f"/v1/jobs/{job_id}/plot.png", headers=ALICE)
    # then they were stored as the job finished, and the summary equals the one computed from the rows
    cached = cache_row(job_id)
    assert cached is not None and summary.status_code == 200 and plot.status_code == 200
    with session_scope() as session:
        assert summary.json() == cached.summary == results.summary(session, job_id)
        job = session.get(Job, job_id)
        assert job is not None
        assert plot.content == cached.plot_png == results.plot_png(session, job)
    assert len(summary.json()["tracks"]) == FACES
    # and later reads are served from the cache, not the rows
    with session_scope() as session:
        session.execute(update(ResultCache).where(ResultCache.job_id == job_id)
                        .values(summary={**cached.summary, "tracks": []}, plot_png=b"cached"))
    assert api.client.get(f"/v1/jobs/{job_id}/summary", headers=ALICE).json()["tracks"] == []
    assert api.client.get(f"/v1/jobs/{job_id}/plot.png", headers=ALICE).content == b"cached"
    # and a running job's come from its rows so far, with nothing cached
    live = api.client.get(f"/v1/jobs/{running}/summary", headers=ALICE).json()
    assert live["tracks"] and cache_row(running) is None


def test_a_cancelled_jobs_results_are_cached_on_first_read_and_go_with_the_job(api: Api) -> None:
    # given a job cancelled with half its segments stored, and a finished one
    cancelled, finished = crowd_job(api, finish=False), crowd_job(api)
    assert api.client.post(f"/v1/jobs/{cancelled}/cancel", headers=ALICE).status_code == 200
    assert cache_row(cancelled) is None
    # when its summary is read
    summary = api.client.get(f"/v1/jobs/{cancelled}/summary", headers=ALICE).json()
    # then it is stored for the next reads
    cached = cache_row(cancelled)
    assert cached is not None and cached.summary == summary and cached.plot_png[:4] == b"\x89PNG"
    # and deleting the job, or its expiry, takes its cache with it
    assert api.client.delete(f"/v1/jobs/{cancelled}", headers=ALICE).status_code == 204
    from worker.retention import expire_jobs

    assert expire_jobs(1.0, str(api.storage_root.as_uri()), now=utc_now() + timedelta(days=2)) >= 1
    assert cache_row(cancelled) is None and cache_row(finished) is None


def test_two_first_reads_at_once_store_one_cache_and_answer_the_same(api: Api,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # given a cancelled job whose first read is raced by another request storing the cache first
    job_id = crowd_job(api, finish=False)
    assert api.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).status_code == 200
    compute = results.computed_results

    def raced(session: Any, job: Job) -> ResultCache:
        computed = compute(session, job)
        with session_scope() as other:
            other.add(compute(other, job))
        return computed

    monkeypatch.setattr(results, "computed_results", raced)
    # when this read stores its own
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        answered = results.finished_results(session, job).summary
    # then the other request's row stands, alone, and this read answered it
    with session_scope() as session:
        rows = session.scalars(select(ResultCache).where(ResultCache.job_id == job_id)).all()
        assert len(rows) == 1 and rows[0].summary == answered == results.summary(session, job_id)


def test_the_csv_streams_each_batch_in_a_session_of_its_own(api: Api) -> None:
    # given the crowd job, exported 40 frames a batch
    job_id = crowd_job(api)
    chunks = results.timeline_csv_lines(job_id, batch=40)
    engine = get_engine()
    checkouts: list[int] = []

    def count_checkout(*_: Any) -> None:
        checkouts.append(1)

    # when the reader pauses after each chunk
    held: list[int] = []
    body: list[str] = []
    event.listen(engine.pool, "checkout", count_checkout)
    try:
        for chunk in chunks:
            held.append(engine.pool.checkedout())  # type: ignore[attr-defined]
            body.append(chunk)
    finally:
        event.remove(engine.pool, "checkout", count_checkout)
    # then no connection is held while it pauses, and each batch took its own
    frames = SEGMENTS * FRAMES_PER_SEGMENT
    assert held == [0] * math.ceil(frames / 40)
    assert len(checkouts) == len(held)
    # and the export is whole: one row per face, in order
    rows = list(csv.DictReader(io.StringIO("".join(body))))
    assert len(rows) == frames * FACES
    assert [int(row["frame_index"]) for row in rows[::FACES]] == [k * 5 for k in range(frames)]
    response = api.client.get(f"/v1/jobs/{job_id}/timeline.csv", headers=ALICE)
    assert response.text == "".join(body)


@pytest.fixture
def pg_api(fervid_env: pytest.MonkeyPatch, pg_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(pg_url, redis_url, fervid_env) as running:
        yield running


def test_a_time_window_of_a_long_job_is_read_through_the_frame_time_index(pg_api: Api) -> None:
    # given a job of 3000 frames on PostgreSQL, with statistics
    api = pg_api
    job_id = str(submit_uri(api).json()["job_id"])
    plans = make_plans(1, 3000)
    start(job_id, plans)
    claim(job_id, 0, "test-worker")
    assert store(job_id, 0, records(plans[0], lambda k: []), [])
    with get_engine().connect() as connection:
        connection.execute(text("ANALYZE frames"))
        connection.commit()
    # when the timeline's frame query for its last 2 % is explained
    statements: list[tuple[str, Any]] = []

    def capture(_connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(get_engine(), "before_cursor_execute", capture)
    try:
        with session_scope() as session:
            results.timeline_page(session, job_id, from_ms=0.98 * 3000 * FRAME_MS)
    finally:
        event.remove(get_engine(), "before_cursor_execute", capture)
    statement, parameters = statements[0]
    connection = get_engine().raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        connection.close()
    # then PostgreSQL finds the frames through the index, not by reading the job's frames from the start
    assert "ix_frames_job_timestamp" in plan, plan
