"""The job's records in the database: its segments, idempotent bulk storage of results, track stitching.

The moves of the job and its segments are fervid.lifecycle's; this module writes what they carry. Delivery is
at-least-once, so every function here is one transaction whose effect is the same however often it runs.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from fervid import lifecycle
from fervid.db import session_scope
from fervid.errors import QUOTA_EXCEEDED
from fervid.jobs import room_for_more_frames
from fervid.labels import EMOTIONS
from fervid.lifecycle import SegmentStatus
from fervid.sampling import PlannedFrame
from fervid.settings import TenantQuota
from fervid.tables import Face, Frame, Job, Segment, Track
from worker import stitch
from worker.media.plan import MediaInfo
from worker.records import FrameRecord, ModelInfo

# Provisional faces.track_id: -(segment_index * this + local_track + 1), negative so it never equals a global id.
# 10,000 fits the 32-bit column for 214,748 segments: more than a FERVID_MAX_DURATION_S of 6 h at 1 s segments.
PROVISIONAL_TRACKS_PER_SEGMENT = 10_000
FRAME_COLUMNS = ("job_id", "frame_index", "timestamp_ms", "segment_index")
FACE_COLUMNS = ("job_id", "frame_index", "face_index", "segment_index", "local_track", "track_id", "x", "y", "w", "h",
                "score", *EMOTIONS, "sharpness", "yaw", "roll")


def provisional_track_id(segment_index: int, local_track: int) -> int:
    """The track id a face carries from storage until the job is stitched: unique per (segment, local track)."""
    if not 0 <= local_track < PROVISIONAL_TRACKS_PER_SEGMENT:
        raise ValueError(f"local track {local_track} is outside 0..{PROVISIONAL_TRACKS_PER_SEGMENT - 1}")
    return -(segment_index * PROVISIONAL_TRACKS_PER_SEGMENT + local_track + 1)


def _segment_rows(job_id: str, segment_plans: list[list[PlannedFrame]]) -> list[dict[str, Any]]:
    rows = []
    for index, plan in enumerate(segment_plans):
        # The range of sampled timestamps the segment covers (0..0 for an empty plan).
        start_ms, end_ms = (float(plan[0].timestamp_ms), float(plan[-1].timestamp_ms)) if plan else (0.0, 0.0)
        rows.append({"job_id": job_id, "index": index, "start_ms": start_ms, "end_ms": end_ms, "plan": plan,
                     "status": SegmentStatus.pending, "attempts": 0, "frames_done": 0, "warnings": []})
    return rows


def start_job(job_id: str, token: str, media: MediaInfo, segment_plans: list[list[PlannedFrame]], model: ModelInfo,
              quota: TenantQuota | None = None) -> list[int]:
    """Moves the job from preparing to running (lifecycle.start_running) with its media, model and segments, if the
    prepare of `token` still holds it; returns the segments to send.

    [] when the job moved on (cancelled, taken over) or is gone; a job with nothing left to analyse is finished here.
    A job whose media samples more frames than it reserved at submission takes the rest from its tenant's day under
    `quota`, or fails quota_exceeded when there is no room: the day's frames never pass the quota.
    """
    frames_total = sum(len(plan) for plan in segment_plans)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if quota is not None and job is not None and job.frames_reserved is not None \
                and frames_total > job.frames_reserved and not room_for_more_frames(session, job, frames_total, quota):
            more = frames_total - job.frames_reserved
            lifecycle.fail(session, job_id, QUOTA_EXCEEDED,
                           f"the media samples {frames_total} frames at {job.sample_fps:g} fps, {more} more than "
                           "its submission reserved, and your last 24 h have no room for them "
                           "(FERVID_MAX_FRAMES_PER_DAY); submit it again with its max_duration_s, or later")
            return []
        # Locks the job row (PostgreSQL), so two prepares of one job run one after the other.
        if not lifecycle.start_running(
                session, job_id, token, media_kind=media.kind, width=media.width, height=media.height, fps=media.fps,
                duration_ms=media.duration_ms, frame_count=media.frame_count, frames_total=frames_total,
                model_name=model.name, model_version=model.version, model_backend=model.backend,
                model_precision=model.precision, model_detector=model.detector):
            return []
        # The move and the segments are one transaction: a prepare that moved the job has written them.
        if segment_plans:
            session.execute(insert(Segment), _segment_rows(job_id, segment_plans))
        open_indices = list(session.scalars(
            select(Segment.index).where(Segment.job_id == job_id,
                                        Segment.status.in_(lifecycle.OPEN_SEGMENT_STATUSES))
            .order_by(Segment.index)))
        if not open_indices:
            _finish(session, job_id)
        return open_indices


def _result_rows(job_id: str, index: int, plan: list[PlannedFrame],
                 frames: list[FrameRecord]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows in FRAME_COLUMNS / FACE_COLUMNS order, with plain Python numbers (results may carry numpy scalars)."""
    planned = {frame.frame_index for frame in plan}
    frame_rows: list[tuple[Any, ...]] = []
    face_rows: list[tuple[Any, ...]] = []
    for frame in frames:
        frame_index = int(frame.frame_index)
        if frame_index not in planned:
            raise ValueError(f"frame {frame_index} is not in the plan of segment {index} of job {job_id}")
        frame_rows.append((job_id, frame_index, float(frame.timestamp_ms), index))
        for face in frame.faces:
            if len(face.probs) != len(EMOTIONS):
                raise ValueError(f"a face needs {len(EMOTIONS)} emotion probabilities, not {len(face.probs)}")
            x, y, w, h = (int(value) for value in face.box)
            face_rows.append((job_id, frame_index, int(face.face_index), index, int(face.local_track),
                              provisional_track_id(index, int(face.local_track)), x, y, w, h, float(face.score),
                              *(float(p) for p in face.probs), _optional(face.sharpness), _optional(face.yaw),
                              _optional(face.roll)))
    return frame_rows, face_rows


def _optional(value: float | None) -> float | None:
    return None if value is None else float(value)


def _bulk_insert(session: Session, frame_rows: list[tuple[Any, ...]], face_rows: list[tuple[Any, ...]]) -> None:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # COPY inside the session's transaction: the fastest path into PostgreSQL.
        driver_connection = connection.connection.driver_connection
        with driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            for name, columns, rows in (("frames", FRAME_COLUMNS, frame_rows), ("faces", FACE_COLUMNS, face_rows)):
                if rows:
                    with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
        return
    for table, columns, rows in ((Frame.__table__, FRAME_COLUMNS, frame_rows),
                                 (Face.__table__, FACE_COLUMNS, face_rows)):
        if rows:
            session.execute(insert(cast(Table, table)), [dict(zip(columns, row, strict=True)) for row in rows])


def store_segment(job_id: str, index: int, token: str, frames: list[FrameRecord], warnings: list[str]) -> bool:
    """Replaces the segment's frames and faces with `frames` and marks it done (lifecycle.complete_segment), in one
    transaction. Storing the same results twice leaves the same rows. False, with nothing written, when `token` no
    longer holds the segment of a running job (cancelled, failed, taken over, gone).
    """
    with session_scope() as session:
        # A share lock on the job row (PostgreSQL): the job cannot be finished, and its faces stitched, meanwhile.
        session.execute(select(Job.id).where(Job.id == job_id).with_for_update(read=True))
        plan = lifecycle.complete_segment(session, job_id, index, token, len(frames), warnings)
        if plan is None:
            return False
        frame_rows, face_rows = _result_rows(job_id, index, plan, frames)
        if plan:
            planned = [row.frame_index for row in plan]
            # By primary-key range; faces go with their frames (ON DELETE CASCADE).
            session.execute(delete(Frame).where(Frame.job_id == job_id, Frame.segment_index == index,
                                                Frame.frame_index.between(min(planned), max(planned)))
                            .execution_options(synchronize_session=False))
        _bulk_insert(session, frame_rows, face_rows)
    return True


def _track_spans(session: Session, job_id: str) -> list[stitch.TrackSpan]:
    """Each segment-local track's first and last observation, in one aggregate query."""
    ends = (select(Face.segment_index, Face.local_track, func.min(Face.frame_index).label("first_frame"),
                   func.max(Face.frame_index).label("last_frame"), func.count().label("frames"))
            .where(Face.job_id == job_id).group_by(Face.segment_index, Face.local_track).subquery())
    first_face, last_face = aliased(Face), aliased(Face)
    first_frame, last_frame = aliased(Frame), aliased(Frame)

    def observed(face: type[Face], frame: type[Frame], frame_index: Any) -> list[tuple[Any, ColumnElement[bool]]]:
        return [(face, and_(face.job_id == job_id, face.frame_index == frame_index,
                            face.segment_index == ends.c.segment_index, face.local_track == ends.c.local_track)),
                (frame, and_(frame.job_id == job_id, frame.frame_index == frame_index))]

    query = select(ends.c.segment_index, ends.c.local_track, ends.c.frames,
                   first_frame.timestamp_ms.label("first_ms"), first_face.x.label("first_x"),
                   first_face.y.label("first_y"), first_face.w.label("first_w"), first_face.h.label("first_h"),
                   last_frame.timestamp_ms.label("last_ms"), last_face.x.label("last_x"),
                   last_face.y.label("last_y"), last_face.w.label("last_w"), last_face.h.label("last_h")
                   ).select_from(ends)
    for target, condition in (observed(first_face, first_frame, ends.c.first_frame)
                              + observed(last_face, last_frame, ends.c.last_frame)):
        query = query.join(target, condition)
    return [stitch.TrackSpan(segment_index=row.segment_index, local_track=row.local_track, frames=row.frames,
                             first_ms=row.first_ms, first_box=(row.first_x, row.first_y, row.first_w, row.first_h),
                             last_ms=row.last_ms, last_box=(row.last_x, row.last_y, row.last_w, row.last_h))
            for row in session.execute(query)]


def _finish(session: Session, job_id: str) -> bool:
    """Succeeds the running job whose segments are all done (lifecycle.succeed), then stitches its tracks."""
    if not lifecycle.succeed(session, job_id):
        return False
    stitching = stitch.stitch(_track_spans(session, job_id))
    if stitching.global_ids:
        faces = cast(Table, Face.__table__)
        session.execute(
            update(faces).where(faces.c.job_id == job_id, faces.c.track_id == bindparam("provisional"))
            .values(track_id=bindparam("global_id")),
            [{"provisional": provisional_track_id(*key), "global_id": global_id}
             for key, global_id in stitching.global_ids.items()])
    session.execute(delete(Track).where(Track.job_id == job_id).execution_options(synchronize_session=False))
    if stitching.tracks:
        session.execute(insert(Track), [{"job_id": job_id, "track_id": t.track_id, "first_ms": t.first_ms,
                                         "last_ms": t.last_ms, "frames": t.frames} for t in stitching.tracks])
    merged = list(session.scalar(select(Job.warnings).where(Job.id == job_id)) or [])
    for segment_warnings in session.scalars(select(Segment.warnings).where(Segment.job_id == job_id)
                                            .order_by(Segment.index)):
        merged += [warning for warning in segment_warnings or [] if warning not in merged]
    session.execute(update(Job).where(Job.id == job_id).values(warnings=merged)
                    .execution_options(synchronize_session=False))
    # The results are final now; their summary and plot are cached by the first read (fervid.results), not here:
    # drawing the plot costs a second or two that a worker, or `fervid analyze`, whose plot nobody may ask for,
    # would spend on every job.
    return True


def finish_job_if_complete(job_id: str) -> bool:
    """Succeeds the job when all its segments are stored, stitching its tracks in the same transaction.

    Exactly one of several concurrent callers gets True; the others, and any call on an unfinished or already
    finished job, get False.
    """
    with session_scope() as session:
        return _finish(session, job_id)


def job_progress(job_id: str) -> tuple[int, int | None]:
    """(frames analysed, summed over the segments; frames the job will produce, None until it is planned)."""
    frames_done = (select(func.coalesce(func.sum(Segment.frames_done), 0)).where(Segment.job_id == job_id)
                   .scalar_subquery().label("frames_done"))
    with session_scope() as session:
        row = session.execute(select(frames_done, Job.frames_total).where(Job.id == job_id)).first()
    return (0, None) if row is None else (int(row.frames_done), row.frames_total)

