"""The job's records (worker.record_store) on the real PostgreSQL and on SQLite: idempotent storage, completion,
stitching."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, func, select, type_coerce, update

from fervid import lifecycle
from fervid.db import session_scope
from fervid.lifecycle import JobStatus, SegmentStatus
from fervid.results import planned_frame
from fervid.sampling import PlannedFrame
from fervid.settings import get_settings
from fervid.tables import Face, Frame, Job, Segment, Track
from worker import record_store
from worker.media.plan import MediaInfo
from worker.records import FaceRecord, FrameRecord, ModelInfo

pytestmark = pytest.mark.integration

MODEL = ModelInfo(name="tiny-test-classifier", version="tiny-0", backend="ort-cpu", precision="fp32",
                  detector="yunet")
MEDIA = MediaInfo(kind="video", width=640, height=360, fps=25.0, duration_ms=6000.0, frame_count=150, rotation=0)
FRAME_MS = 200.0  # 5 fps sampling of a 25 fps clip: every fifth frame
LEFT, RIGHT = (100, 100, 80, 80), (450, 120, 70, 70)


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, fervid_env: pytest.MonkeyPatch) -> str:
    """FERVID_DATABASE_URL at a migrated database of each kind."""
    from fervid.settings import get_settings

    url = str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))
    fervid_env.setenv("FERVID_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


def make_job(status: JobStatus = JobStatus.queued, tenant: str = "alice", **fields: Any) -> str:
    job_id = str(uuid.uuid4())
    fields.setdefault("created_at", datetime.now(UTC))
    fields.setdefault("queue", get_settings().queue)  # as the API does: the job goes to the configured queue
    with session_scope() as session:
        session.add(Job(id=job_id, tenant=tenant, status=status, source_uri="file:///clip.mp4", sample_fps=5.0,
                        warnings=[], **fields))
    return job_id


def make_plans(segments: int, frames_per_segment: int) -> list[list[PlannedFrame]]:
    """Plans timed by their pts, segment after segment."""
    plans = []
    for segment in range(segments):
        rows = []
        for step in range(frames_per_segment):
            sample = segment * frames_per_segment + step
            rows.append(PlannedFrame(frame_index=sample * 5, timestamp_ms=sample * FRAME_MS, pts=sample * 5 * 512,
                                     keyframe_pts=(sample * 5 // 50) * 50 * 512))
        plans.append(rows)
    return plans


def probs(seed: int) -> list[float]:
    raw = [1.0 + (seed * 7 + k * 3) % 11 for k in range(7)]
    return [value / sum(raw) for value in raw]


def records(plan: list[PlannedFrame], boxes: Callable[[int], list[tuple[int, tuple[int, int, int, int]]]]
            ) -> list[FrameRecord]:
    """A FrameRecord per planned frame; `boxes(frame_index)` gives that frame's (local_track, box) faces."""
    return [FrameRecord(frame_index=planned.frame_index, timestamp_ms=planned.timestamp_ms,
                        faces=[FaceRecord(face_index=i, local_track=track, box=box, score=0.9,
                                          probs=probs(planned.frame_index + i))
                               for i, (track, box) in enumerate(boxes(planned.frame_index))])
            for planned in plan]


def one_face(frame_index: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    return [(0, LEFT)]


PREPARE_TOKEN = "prepare-delivery"
CLAIMS: dict[tuple[str, int], str] = {}  # (job, segment) -> the token of its last claim here


def start(job_id: str, plans: list[list[PlannedFrame]]) -> list[int]:
    """A prepare's end: claimed by one delivery, which then starts the job with its segments."""
    lifecycle.claim_prepare(job_id, PREPARE_TOKEN, retrying=False, max_attempts=3, stale_after_s=60)
    return record_store.start_job(job_id, PREPARE_TOKEN, MEDIA, plans, MODEL)


def claim(job_id: str, index: int, worker: str) -> list[PlannedFrame] | None:
    """A segment claimed by one delivery per worker (the worker's name is its token)."""
    CLAIMS[(job_id, index)] = worker
    return lifecycle.claim_segment(job_id, index, worker, worker, retrying=False, max_attempts=3, stale_after_s=60)


def store(job_id: str, index: int, frames: list[FrameRecord], warnings: list[str]) -> bool:
    return record_store.store_segment(job_id, index, CLAIMS.get((job_id, index), "unclaimed"), frames, warnings)


def beat(job_id: str, index: int, frames_done: int) -> bool:
    return lifecycle.segment_heartbeat(job_id, index, CLAIMS.get((job_id, index), "unclaimed"), frames_done)


def started_job(segments: int = 3, frames_per_segment: int = 10, **fields: Any) -> tuple[str, list[list[PlannedFrame]]]:
    job_id = make_job(**fields)
    plans = make_plans(segments, frames_per_segment)
    assert start(job_id, plans) == list(range(segments))
    return job_id, plans


def result_rows(job_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with session_scope() as session:
        frames = session.execute(select(Frame.frame_index, Frame.timestamp_ms, Frame.segment_index)
                                 .where(Frame.job_id == job_id).order_by(Frame.frame_index)).all()
        faces = session.execute(select(*Face.__table__.columns).where(Face.job_id == job_id)
                                .order_by(Face.frame_index, Face.face_index)).all()
    return [tuple(row) for row in frames], [tuple(row) for row in faces]


def segment_states(job_id: str) -> list[tuple[int, str, int]]:
    with session_scope() as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(Segment.index, Segment.status, Segment.attempts).where(Segment.job_id == job_id)
            .order_by(Segment.index))]


def load_job(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def cancel(job_id: str) -> None:
    """What the API does on cancel."""
    with session_scope() as session:
        assert lifecycle.cancel(session, job_id)


def process(job_id: str, index: int, plan: list[PlannedFrame], boxes: Callable[[int], Any] = one_face,
            warnings: list[str] | None = None) -> bool:
    assert claim(job_id, index, "test-worker") == plan
    return store(job_id, index, records(plan, boxes), warnings or [])


def test_start_job_creates_the_segments_once(database: str) -> None:
    # given a queued job
    job_id = make_job()
    plans = make_plans(3, 4)
    # when prepare runs, and is delivered again (the second time with a different segmentation)
    first = start(job_id, plans)
    started_at = load_job(job_id).started_at
    again = start(job_id, make_plans(2, 6))
    # then the segments and frames_total are those of the first prepare, the job started once, and the redelivery
    # (whose claim found the job running) started nothing
    assert first == [0, 1, 2] and again == []
    job = load_job(job_id)
    assert job.status == JobStatus.running and job.started_at == started_at
    assert (job.media_kind, job.width, job.height, job.frame_count, job.frames_total) == ("video", 640, 360, 150, 12)
    assert (job.model_name, job.model_version, job.model_backend) == ("tiny-test-classifier", "tiny-0", "ort-cpu")
    assert (job.model_precision, job.model_detector) == ("fp32", "yunet")
    with session_scope() as session:
        segments = session.scalars(select(Segment).where(Segment.job_id == job_id).order_by(Segment.index)).all()
    assert [s.plan for s in segments] == plans
    assert [(s.start_ms, s.end_ms) for s in segments] == [(0, 600), (800, 1400), (1600, 2200)]


def test_start_job_returns_nothing_for_a_cancelled_job_and_finishes_an_empty_one(database: str) -> None:
    # given a cancelled job and a job whose media samples no frame
    cancelled, empty = make_job(JobStatus.cancelled), make_job()
    # when prepare runs on each
    # then the cancelled job stays cancelled with no segments, the empty one succeeds with nothing to send
    assert start(cancelled, make_plans(2, 3)) == []
    assert load_job(cancelled).status == JobStatus.cancelled and segment_states(cancelled) == []
    assert start(empty, []) == []
    assert load_job(empty).status == JobStatus.succeeded and record_store.job_progress(empty) == (0, 0)


def test_a_second_delivery_while_one_runs_claims_nothing_and_spends_no_attempt(database: str) -> None:
    # given a segment claimed by one delivery
    job_id, plans = started_job()
    results = records(plans[1], lambda frame: [(0, LEFT), (1, RIGHT)])
    assert claim(job_id, 1, "host:1") == plans[1]
    # when a second delivery of it arrives while the first runs (the reaper re-sent a message that was only slow)
    second = lifecycle.claim_segment(job_id, 1, "host:2", "host:2", retrying=False, max_attempts=3, stale_after_s=60)
    # then it gets nothing, spends nothing, and the first stores once; storing again changes nothing
    assert second is None and segment_states(job_id)[1] == (1, SegmentStatus.running, 1)
    assert store(job_id, 1, results, [])
    first = result_rows(job_id)
    assert store(job_id, 1, results, []) is False
    assert result_rows(job_id) == first
    assert len(first[0]) == 10 and len(first[1]) == 20
    assert segment_states(job_id)[1] == (1, SegmentStatus.done, 1)


def test_a_stale_segment_is_taken_over_and_its_old_owner_can_no_longer_write(database: str) -> None:
    # given a segment whose first owner stopped heartbeating two minutes ago, next to a stored neighbour
    job_id, plans = started_job()
    assert process(job_id, 0, plans[0])
    neighbour = [row for row in result_rows(job_id)[1] if row[3] == 0]
    assert claim(job_id, 1, "host:1") == plans[1]
    with session_scope() as session:
        session.execute(update(Segment).where(Segment.job_id == job_id, Segment.index == 1)
                        .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=2)))
    # when another delivery claims it
    assert claim(job_id, 1, "host:2") == plans[1]
    # then the old owner's heartbeat and results are refused, the new owner's stored, the neighbour untouched
    assert lifecycle.segment_heartbeat(job_id, 1, "host:1", 3) is False
    assert record_store.store_segment(job_id, 1, "host:1", records(plans[1], one_face), []) is False
    assert store(job_id, 1, records(plans[1], lambda frame: [(0, LEFT), (1, RIGHT)]), [])
    frames, faces = result_rows(job_id)
    assert len(frames) == 20
    assert [row for row in faces if row[3] == 0] == neighbour
    assert len([row for row in faces if row[3] == 1]) == 20
    assert segment_states(job_id)[1] == (1, SegmentStatus.done, 2)


def test_store_after_cancel_returns_false_and_writes_nothing(database: str) -> None:
    # given a claimed segment whose job is then cancelled
    job_id, plans = started_job()
    assert claim(job_id, 0, "test-worker") == plans[0]
    cancel(job_id)
    # when the worker stores its results
    stored = store(job_id, 0, records(plans[0], one_face), [])
    # then nothing is written and the worker is told to stop
    assert stored is False
    assert result_rows(job_id) == ([], [])
    assert beat(job_id, 0, 5) is False
    assert claim(job_id, 1, "test-worker") is None
    # and the segment counts as running until its worker lets it go, then it is cancelled
    assert [state for _, state, _ in segment_states(job_id)] == [SegmentStatus.running, SegmentStatus.cancelled,
                                                                  SegmentStatus.cancelled]
    lifecycle.release_segment(job_id, 0, "test-worker")
    assert segment_states(job_id)[0][1] == SegmentStatus.cancelled


def test_store_for_a_deleted_or_failed_job_returns_false(database: str) -> None:
    # given a failed job and a job id that does not exist
    job_id, plans = started_job()
    lifecycle.fail_job(job_id, "decode_error", "the frames cannot be decoded")
    # when results arrive for them / then nothing is stored
    assert store(job_id, 0, records(plans[0], one_face), []) is False
    assert store(str(uuid.uuid4()), 0, records(plans[0], one_face), []) is False
    assert result_rows(job_id) == ([], [])


def test_frames_outside_the_plan_are_refused_and_nothing_is_written(database: str) -> None:
    # given a claimed segment
    job_id, plans = started_job()
    claim(job_id, 0, "test-worker")
    # when the results carry a frame of another segment
    with pytest.raises(ValueError, match="not in the plan"):
        store(job_id, 0, records(plans[0] + plans[1][:1], one_face), [])
    # then the transaction left nothing behind
    assert result_rows(job_id) == ([], [])
    assert segment_states(job_id)[0][1] == SegmentStatus.running


def test_claim_and_heartbeat_follow_the_segment(database: str) -> None:
    # given a running job
    job_id, plans = started_job(segments=2)
    # when a segment is claimed, beats, and is stored
    assert claim(job_id, 0, "host:1") == plans[0]
    assert beat(job_id, 0, 4) is True
    with session_scope() as session:
        segment = session.get(Segment, (job_id, 0))
        assert segment is not None
        assert (segment.status, segment.worker, segment.attempts, segment.frames_done) == ("running", "host:1", 1, 4)
    assert store(job_id, 0, records(plans[0], one_face), [])
    # then a done segment is not claimed again and its heartbeat says stop; an unknown one neither
    assert claim(job_id, 0, "host:2") is None
    assert beat(job_id, 0, 10) is False
    assert claim(job_id, 7, "host:2") is None


def test_plans_stored_by_earlier_releases_still_read(database: str) -> None:
    # given a running job whose segments' plans are stored as earlier releases stored them: positional rows of
    # four values (before by_order), five (before keyframe_pos), and six (by order, from a restart point)
    job_id, _ = started_job(segments=3, frames_per_segment=2)
    stored = [[[0, 0.0, 0, 0], [5, 200.0, 2560, 0]],
              [[10, 400.0, 5120, 0, 0], [15, 600.0, 7680, 0, 0]],
              [[20, 800.0, 20, 18, 1, 4096], [25, 1000.0, 25, 18, 1, 4096]]]
    with session_scope() as session:
        for index, rows in enumerate(stored):
            session.execute(update(Segment).where(Segment.job_id == job_id, Segment.index == index)
                            .values(plan=type_coerce(rows, JSON)))  # the raw JSON, past PlanColumn
    # when workers claim the segments, and the API looks up a stored frame's place for its still
    plans = [claim(job_id, index, "old-rows") for index in range(3)]
    assert plans[2] is not None and store(job_id, 2, records(plans[2], one_face), [])
    with session_scope() as session:
        still = planned_frame(session, job_id, 25)
    # then each frame reads whole, the fields its release did not write at their defaults
    assert plans == [
        [PlannedFrame(frame_index=0, timestamp_ms=0.0, pts=0, keyframe_pts=0),
         PlannedFrame(frame_index=5, timestamp_ms=200.0, pts=2560, keyframe_pts=0)],
        [PlannedFrame(frame_index=10, timestamp_ms=400.0, pts=5120, keyframe_pts=0),
         PlannedFrame(frame_index=15, timestamp_ms=600.0, pts=7680, keyframe_pts=0)],
        [PlannedFrame(frame_index=20, timestamp_ms=800.0, pts=20, keyframe_pts=18, by_order=True, keyframe_pos=4096),
         PlannedFrame(frame_index=25, timestamp_ms=1000.0, pts=25, keyframe_pts=18, by_order=True,
                      keyframe_pos=4096)]]
    assert still == plans[2][1]


def test_fail_job_is_terminal_and_only_from_active_states(database: str) -> None:
    # given a running job with a claimed segment
    job_id, plans = started_job(segments=2)
    claim(job_id, 0, "host:1")
    # when it fails, and a late second failure arrives
    lifecycle.fail_job(job_id, "decode_error", "the frames of this video cannot be decoded")
    lifecycle.fail_job(job_id, "internal_error", "late")
    # then the first failure stands, with its time, and no segment is left open but the one its worker still holds
    job = load_job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "decode_error") and job.finished_at is not None
    assert [state for _, state, _ in segment_states(job_id)] == [SegmentStatus.running, SegmentStatus.cancelled]
    assert record_store.finish_job_if_complete(job_id) is False


def test_progress_sums_the_segments(database: str) -> None:
    # given a job before and after planning
    job_id = make_job()
    assert record_store.job_progress(job_id) == (0, None)
    plans = make_plans(3, 10)
    start(job_id, plans)
    # when one segment is stored and another reports progress
    assert process(job_id, 0, plans[0])
    claim(job_id, 1, "host:1")
    beat(job_id, 1, 4)
    # then progress is their sum out of every planned frame
    assert record_store.job_progress(job_id) == (14, 30)
    assert record_store.job_progress(str(uuid.uuid4())) == (0, None)


def test_the_job_finishes_only_when_every_segment_is_stored(database: str) -> None:
    # given a job with two of three segments stored
    job_id, plans = started_job()
    assert process(job_id, 0, plans[0]) and process(job_id, 2, plans[2])
    # when completion is checked, then the last segment is stored and it is checked again (twice)
    early = record_store.finish_job_if_complete(job_id)
    assert process(job_id, 1, plans[1])
    results = [record_store.finish_job_if_complete(job_id), record_store.finish_job_if_complete(job_id)]
    # then only the check after the last segment succeeds the job, once
    assert early is False and results == [True, False]
    job = load_job(job_id)
    assert job.status == JobStatus.succeeded and job.finished_at is not None
    assert record_store.job_progress(job_id) == (30, 30)
    # and a late duplicate of a segment cannot rewrite a finished job
    before = result_rows(job_id)
    assert store(job_id, 1, records(plans[1], lambda frame: []), []) is False
    assert result_rows(job_id) == before


def test_two_workers_finishing_the_last_two_segments_at_once_succeed_the_job_once(database: str) -> None:
    for _ in range(4):  # a few rounds, so the two orders of arrival both get a chance
        # given a job with two claimed segments
        job_id, plans = started_job(segments=2, frames_per_segment=20)
        for index in (0, 1):
            claim(job_id, index, f"host:{index}")
        barrier = threading.Barrier(2)
        outcomes: dict[int, bool | BaseException] = {}

        def finish_segment(index: int, job_id: str = job_id, plans: list[list[PlannedFrame]] = plans,
                           barrier: threading.Barrier = barrier, outcomes: dict[int, Any] = outcomes) -> None:
            try:
                barrier.wait(timeout=30)
                assert store(job_id, index, records(plans[index], one_face), [])
                outcomes[index] = record_store.finish_job_if_complete(job_id)
            except BaseException as error:  # reported by the main thread
                outcomes[index] = error

        # when two threads store the last two segments and each tries to finish the job
        threads = [threading.Thread(target=finish_segment, args=(index,)) for index in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        # then exactly one of them finished it, and the job has its stitched track once
        assert sorted(outcomes.values(), key=repr) == [False, True], outcomes
        assert load_job(job_id).status == JobStatus.succeeded
        with session_scope() as session:
            tracks = session.execute(select(Track.track_id, Track.frames).where(Track.job_id == job_id)).all()
        assert [tuple(track) for track in tracks] == [(1, 40)]


def test_finishing_stitches_tracks_across_segments(database: str) -> None:
    # given a person on the left through three segments (local id 0, then 1 after someone else took 0),
    # and a second person on the right only in the middle segment
    job_id, plans = started_job(segments=3, frames_per_segment=10)
    assert process(job_id, 0, plans[0])
    assert process(job_id, 1, plans[1], lambda frame: [(1, LEFT), (0, RIGHT)])
    assert process(job_id, 2, plans[2])
    # when the job finishes
    assert record_store.finish_job_if_complete(job_id)
    # then faces carry the global ids (left person 1, right person 2) and the tracks table describes them
    _, faces = result_rows(job_id)
    columns = [column.key for column in Face.__table__.columns]
    by_box = {(row[columns.index("x")], row[columns.index("track_id")]) for row in faces}
    assert by_box == {(LEFT[0], 1), (RIGHT[0], 2)}
    with session_scope() as session:
        tracks = session.execute(select(Track.track_id, Track.first_ms, Track.last_ms, Track.frames)
                                 .where(Track.job_id == job_id).order_by(Track.track_id)).all()
        negative = session.scalar(select(func.count()).where(Face.job_id == job_id, Face.track_id < 1))
    assert [tuple(track) for track in tracks] == [(1, 0.0, 29 * FRAME_MS, 30), (2, 10 * FRAME_MS, 19 * FRAME_MS, 10)]
    assert negative == 0


def test_stored_faces_carry_provisional_ids_unique_per_segment_track(database: str) -> None:
    # given two segments whose trackers both numbered their face 0
    job_id, plans = started_job(segments=2)
    # when they are stored (the job is not finished yet)
    assert process(job_id, 0, plans[0]) and process(job_id, 1, plans[1])
    # then their faces are told apart until stitching
    with session_scope() as session:
        ids = session.execute(select(Face.segment_index, Face.track_id).where(Face.job_id == job_id)
                              .distinct().order_by(Face.segment_index)).all()
    assert [tuple(row) for row in ids] == [(0, record_store.provisional_track_id(0, 0)),
                                           (1, record_store.provisional_track_id(1, 0))]
    assert ids[0][1] != ids[1][1]


def test_finishing_merges_segment_warnings_into_the_job(database: str) -> None:
    # given segments that stored warnings (one repeated), on a job that already had one
    job_id, plans = started_job(segments=3)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(warnings=["rotation metadata ignored"]))
    assert process(job_id, 0, plans[0], warnings=["frame 5 could not be decoded"])
    assert process(job_id, 1, plans[1])
    assert process(job_id, 2, plans[2], warnings=["frame 5 could not be decoded", "frame 140 was empty"])
    # when the job finishes
    assert record_store.finish_job_if_complete(job_id)
    # then the job lists every warning once, in segment order
    assert load_job(job_id).warnings == ["rotation metadata ignored", "frame 5 could not be decoded",
                                         "frame 140 was empty"]


def test_a_segment_whose_media_is_gone_fails_the_job_and_owes_its_webhook(
    database: str, fervid_env: pytest.MonkeyPatch, tiny_model_path: Path
) -> None:
    # given a running job with a webhook whose uploaded media vanished after it was planned
    from fervid.settings import get_settings
    from fervid.tables import WebhookEvent
    from worker import pipeline, runner

    fervid_env.setenv("FERVID_MODEL_PATH", str(tiny_model_path))
    fervid_env.setenv("FERVID_BROKER_URL", "redis://127.0.0.1:1/0")  # no broker: the owed event waits in the outbox
    get_settings.cache_clear()
    job_id, _ = started_job(segments=2, stored_media_key="gone/media", webhook_url="https://example.com/hook")
    # when a worker processes one of its segments
    runner.run_segment(job_id, 1, "delivery-1", pipeline.build_analyzer(get_settings()), get_settings())
    # then the job failed with the reason, and its one webhook event is owed
    job = load_job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "source_unavailable")
    assert lifecycle.fail_job(job_id, "internal_error", "late") is False
    with session_scope() as session:
        owed = session.execute(select(WebhookEvent.job_id, WebhookEvent.outcome)).all()
    assert [tuple(row) for row in owed if row[0] == job_id] == [(job_id, None)]
