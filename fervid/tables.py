"""Database tables. Keys are chosen so that writing the same frames twice changes nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fervid.labels import EMOTIONS
from fervid.sampling import PlanJson, PlannedFrame, plan_from_json, plan_to_json

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PlanColumn(TypeDecorator[list[PlannedFrame]]):
    """A segment's plan in its JSON form (fervid.sampling.plan_to_json); the rows earlier releases wrote read too."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: list[PlannedFrame] | None, dialect: Dialect) -> PlanJson | None:
        return None if value is None else plan_to_json(value)

    def process_result_value(self, value: PlanJson | None, dialect: Dialect) -> list[PlannedFrame] | None:
        return None if value is None else plan_from_json(value)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # fervid.lifecycle.JobStatus; only fervid.lifecycle moves it
    source_uri: Mapped[str] = mapped_column(Text)  # where workers read the media (storage URI or user URI)
    stored_media_key: Mapped[str | None] = mapped_column(Text)  # set for uploads: deleted with the job
    stored_media_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the upload's size, for the tenant's quota
    filename: Mapped[str | None] = mapped_column(String(255))
    sample_fps: Mapped[float] = mapped_column(Float)
    client_request_token: Mapped[str | None] = mapped_column(String(128))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # The Celery queue its tasks go to: the submitting process's FERVID_QUEUE.
    queue: Mapped[str] = mapped_column(String(64), server_default="cpu")  # the creator names it (FERVID_QUEUE)

    media_kind: Mapped[str | None] = mapped_column(String(8))  # video | image
    duration_ms: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    frame_count: Mapped[int | None] = mapped_column(Integer)
    frames_total: Mapped[int | None] = mapped_column(Integer)  # sampled frames the job will produce
    # The most frames it may sample, reserved of its tenant's frames per day from submission until frames_total is
    # known (fervid.jobs.reserved_frames); prepare fails a job whose media would sample more.
    frames_reserved: Mapped[int | None] = mapped_column(Integer)

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    model_backend: Mapped[str | None] = mapped_column(String(32))
    model_precision: Mapped[str | None] = mapped_column(String(16))
    model_detector: Mapped[str | None] = mapped_column(String(16))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    prepare_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # prepares claimed
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the preparing worker's liveness
    # The delivery that holds the job's prepare, until it lets go (None: no prepare runs); fervid.lifecycle.
    prepare_token: Mapped[str | None] = mapped_column(String(64))

    segments: Mapped[list[Segment]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="Segment.index"
    )

    __table_args__ = (
        UniqueConstraint("tenant", "client_request_token"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )


class Segment(Base):
    """A time range of one job, processed by one task; rewriting a segment replaces its frames whole."""

    __tablename__ = "segments"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column("segment_index", Integer, primary_key=True)
    start_ms: Mapped[float] = mapped_column(Float)
    end_ms: Mapped[float] = mapped_column(Float)
    plan: Mapped[list[PlannedFrame]] = mapped_column(PlanColumn)  # the frames this segment samples, from the probe
    status: Mapped[str] = mapped_column(String(16))  # fervid.lifecycle.SegmentStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_token: Mapped[str | None] = mapped_column(String(64))  # the delivery that runs it (fervid.lifecycle)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)

    job: Mapped[Job] = relationship(back_populates="segments")

    __table_args__ = (Index("ix_segments_status_heartbeat", "status", "heartbeat_at"),)


class Frame(Base):
    """One sampled frame; it exists (with zero or more faces) for every frame the sampling rule selects."""

    __tablename__ = "frames"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    frame_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    timestamp_ms: Mapped[float] = mapped_column(Float)
    segment_index: Mapped[int] = mapped_column(Integer)

    # The timeline's from_ms/to_ms and the plot's time span find their frames without reading the whole job.
    __table_args__ = (Index("ix_frames_job_timestamp", "job_id", "timestamp_ms"),)


class Face(Base):
    __tablename__ = "faces"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    frame_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    face_index: Mapped[int] = mapped_column(Integer, primary_key=True)  # order within the frame
    segment_index: Mapped[int] = mapped_column(Integer)
    local_track: Mapped[int] = mapped_column(Integer)  # the tracker's id inside its segment
    track_id: Mapped[int] = mapped_column(Integer)  # stitched across segments when the job finishes
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    angry: Mapped[float] = mapped_column(Float)
    disgust: Mapped[float] = mapped_column(Float)
    fear: Mapped[float] = mapped_column(Float)
    happy: Mapped[float] = mapped_column(Float)
    sad: Mapped[float] = mapped_column(Float)
    surprise: Mapped[float] = mapped_column(Float)
    neutral: Mapped[float] = mapped_column(Float)
    # What makes the face readable (models/face_quality.py; fervid/quality.py decides `reliable` from them): the
    # sharpness of the classifier's crop, and the head's yaw and roll in degrees from the detector's landmarks
    # (None: a detector without landmarks, or a face analysed before they were measured).
    sharpness: Mapped[float | None] = mapped_column(Float)
    yaw: Mapped[float | None] = mapped_column(Float)
    roll: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "frame_index"], ["frames.job_id", "frames.frame_index"], ondelete="CASCADE"
        ),
        Index("ix_faces_job_track", "job_id", "track_id", "frame_index"),
    )


class Track(Base):
    """A person followed across the job, written when the job finishes."""

    __tablename__ = "tracks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    track_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_ms: Mapped[float] = mapped_column(Float)
    last_ms: Mapped[float] = mapped_column(Float)
    frames: Mapped[int] = mapped_column(Integer)


class ResultCache(Base):
    """A finished job's summary and plot.png, computed once when it ends: a finished job's results never change,
    so they are never invalidated, only deleted with the job."""

    __tablename__ = "result_caches"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)  # as fervid.results.summary returns it
    plot_png: Mapped[bytes] = mapped_column(LargeBinary)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# The per-emotion columns of `faces`, in FER order; the table and the label list must agree.
EMOTION_COLUMNS = tuple(getattr(Face, name) for name in EMOTIONS)
assert tuple(column.key for column in EMOTION_COLUMNS) == EMOTIONS


class Worker(Base):
    """What one worker process runs, written when it starts and refreshed while it lives, so the API (on another
    host) can say what its workers run; a row no longer refreshed belongs to a worker that is gone."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid, as segments.worker names it
    detector: Mapped[str] = mapped_column(String(16))  # yunet | haar
    detector_reason: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_workers_seen_at", "seen_at"),)


class AuditEvent(Base):
    """Who did what: deletes, expiries, and key use (one row per key, or per failing address, per minute)."""

    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(32))  # fervid.audit's constants
    tenant: Mapped[str | None] = mapped_column(String(64))  # None for a key that named no tenant
    job_id: Mapped[str | None] = mapped_column(String(36))  # not a foreign key: the job may be gone
    key_id: Mapped[str | None] = mapped_column(String(16))  # a prefix of the key's SHA-256, never the key
    client: Mapped[str | None] = mapped_column(String(64))  # the client's address

    __table_args__ = (Index("ix_audit_events_tenant_at", "tenant", "at"),)


class WebhookEvent(Base):
    """A job-finished event owed to the job's webhook_url: written in the transaction that ends the job, so the
    event outlives a crash or a flushed broker between that commit and its sending (fervid.lifecycle)."""

    __tablename__ = "webhook_events"

    event_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the same on every attempt
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)  # a job ends once
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the next attempt's time
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # its message's, None: not sent yet
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str | None] = mapped_column(String(16))  # None while owed; delivered | dropped | failed

    __table_args__ = (Index("ix_webhook_events_outcome_due", "outcome", "due_at"),)


class AnnotatedVideo(Base):
    """A job's annotated video (fervid.annotated): asked for through the API, rendered by a worker into the job's
    folder of the media store, deleted with the job."""

    __tablename__ = "annotated_videos"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # fervid.annotated.RenderStatus
    token: Mapped[str] = mapped_column(String(32))  # the render asked for last: only it may write the row
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # its worker's liveness
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    frames_total: Mapped[int | None] = mapped_column(Integer)
    stored_uri: Mapped[str | None] = mapped_column(Text)  # once ready
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)  # counted in the tenant's stored bytes
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
