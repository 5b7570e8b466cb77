"""Request and response bodies of the HTTP API, and the opaque pagination cursors."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Literal, Self
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fervid.errors import InvalidRequest
from fervid.labels import EMOTIONS
from fervid.lifecycle import JobStatus
from fervid.utc import as_utc

SOURCE_SCHEMES = ("file", "s3", "http", "https")
# Integer columns are 32-bit: a number outside them is a 422 here, not a database error later.
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
WEBHOOK_SCHEMES = ("http", "https")

JobStatusName = Literal["queued", "preparing", "running", "succeeded", "failed", "cancelled"]
assert set(JobStatusName.__args__) == {status.value for status in JobStatus}  # type: ignore[attr-defined]
EmotionName = Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
assert EmotionName.__args__ == EMOTIONS  # type: ignore[attr-defined]


def _check_printable(value: str, what: str) -> str:
    # PostgreSQL refuses NUL in text, and no URI or token needs control characters.
    if not value.isprintable():
        raise ValueError(f"{what} has control characters")
    return value


def _check_uri(value: str, schemes: tuple[str, ...], what: str) -> str:
    _check_printable(value, what)
    parsed = urlparse(value)
    if parsed.scheme.lower() not in schemes:
        raise ValueError(f"{what} must use one of {', '.join(f'{s}://' for s in schemes)}, not {value!r}")
    if parsed.scheme.lower() == "file" and not parsed.path:
        raise ValueError(f"{what} {value!r} names no file path")
    if parsed.scheme.lower() != "file" and not parsed.netloc:
        raise ValueError(f"{what} {value!r} names no host or bucket")
    try:
        parsed.port  # noqa: B018 - raises for a port that is not a number in 0..65535
    except ValueError as error:
        raise ValueError(f"{what} {value!r} has an invalid port") from error
    if any(char.isspace() or not char.isprintable() for char in parsed.netloc):
        raise ValueError(f"{what} {value!r} has spaces or control characters in its host")
    return value


class JobOptions(BaseModel):
    """The options of a submission, as form fields next to an uploaded `file`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    sample_fps: float = Field(5.0, gt=0, le=120, allow_inf_nan=False,
                              description="frames sampled per second of video (0 < fps <= 120)")
    client_request_token: str | None = Field(
        None, min_length=1, max_length=128,
        description="idempotency key: the same tenant and token always get the same job back")
    webhook_url: str | None = Field(None, max_length=2048, description="POSTed to when the job finishes")
    max_duration_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="the longest the media runs, in seconds (default FERVID_RESERVED_DURATION_S, at most "
                    "FERVID_MAX_DURATION_S). Until the job is prepared it reserves max_duration_s x sample_fps of your "
                    "frames per day; longer media takes the rest when it is prepared if your day has room, else "
                    "fails quota_exceeded")

    @field_validator("client_request_token")
    @classmethod
    def _printable_token(cls, value: str | None) -> str | None:
        return None if value is None else _check_printable(value, "client_request_token")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_scheme(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, WEBHOOK_SCHEMES, "webhook_url")


class JobFromUri(JobOptions):
    """A submission of media the workers read themselves."""

    source_uri: str = Field(..., min_length=1, max_length=4096,
                            description="file://, s3:// or http(s):// URI of a video or image")

    @field_validator("source_uri")
    @classmethod
    def _source_scheme(cls, value: str) -> str:
        return _check_uri(value, SOURCE_SCHEMES, "source_uri")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable")
    message: str = Field(description="what happened and what to do next")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Progress(BaseModel):
    frames_done: int
    frames_total: int | None


class Media(BaseModel):
    kind: Literal["video", "image"] | None
    duration_ms: float | None
    fps: float | None
    width: int | None
    height: int | None
    frame_count: int | None


class ModelUsed(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str | None
    version: str | None
    backend: str | None
    precision: str | None = Field(description="what the classifier computed in: int8, fp32 or fp16")
    detector: str | None = Field(description="the face detector: yunet, or haar when YuNet could not be had")


class JobOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    job_id: str
    status: JobStatusName
    progress: Progress
    media: Media
    error: ErrorDetail | None
    warnings: list[str]
    model: ModelUsed
    sample_fps: float
    filename: str | None = Field(description="the uploaded file's name; null for source_uri submissions")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class Box(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FaceQualityOut(BaseModel):
    size_px: int = Field(description="the box's longer side, in frame pixels")
    sharpness: float | None = Field(description="variance of the Laplacian of the face at 48x48 grey (low: blurred)")
    yaw_deg: float | None = Field(description="head turn estimated from the landmarks (0: facing the camera); null "
                                              "for a detector without landmarks")
    roll_deg: float | None = Field(description="head tilt: the angle of the line between the eyes")
    top_probability: float = Field(description="the most probable emotion's (calibrated) probability")
    margin: float = Field(description="the top probability less the second")
    reliable: bool = Field(description="every measure in the range where the classifier stays accurate "
                                       "(docs/api.md, Face quality); summaries and the plot use reliable faces")
    unreliable_because: list[Literal["small", "blurred", "turned", "tilted"]]


class FaceOut(BaseModel):
    track_id: int
    box: Box
    score: float = Field(description="the detector's confidence")
    emotions: dict[EmotionName, float] = Field(description="probabilities of the 7 FER-2013 emotions, in order")
    dominant: EmotionName
    quality: FaceQualityOut


class TimelineItem(BaseModel):
    frame_index: int
    timestamp_ms: float
    faces: list[FaceOut]


class TimelinePage(BaseModel):
    job_id: str
    items: list[TimelineItem]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class TrackSummary(BaseModel):
    track_id: int
    first_ms: float
    last_ms: float
    frames: int
    mean_emotions: dict[EmotionName, float]
    dominant: EmotionName = Field(description="the emotion with the highest mean probability")
    dominant_share: dict[EmotionName, float] = Field(
        description="per emotion, the fraction of the track's faces on which it is the most probable")
    faces_left_out: int = Field(0, description="the track's faces not counted: not reliable (faces=reliable)")


class OverallSummary(BaseModel):
    mean_emotions: dict[EmotionName, float] | None = Field(description="over every face; null without faces")
    dominant: EmotionName | None
    dominant_share: dict[EmotionName, float] | None = Field(
        description="per emotion, the fraction of all faces on which it is the most probable; null without faces")
    faces_left_out: int = Field(0, description="faces not counted: not reliable (faces=reliable)")


class Summary(BaseModel):
    tracks: list[TrackSummary]
    overall: OverallSummary


class WebhookKey(BaseModel):
    kid: str = Field(description="the key id a signature names (kid=...)")
    key: str = Field(description="your HMAC-SHA256 key of that id, hex")


class WebhookSigningKey(BaseModel):
    header: str = Field(description="the request header carrying the signature")
    scheme: str = Field(description="how to check it")
    kid: str = Field(description="the id of the key new webhooks are signed with")
    key: str = Field(description="your HMAC-SHA256 key new webhooks are signed with, hex")
    keys: list[WebhookKey] = Field(description="every key a webhook carries a signature under now, the signing one "
                                               "first; more than one while the operator rotates")


class Health(BaseModel):
    status: Literal["ok"]


class WorkerOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(description="host:pid of the worker process")
    detector: str = Field(description="yunet, or haar when YuNet could not be had")
    detector_reason: str
    backend: str
    precision: str
    model_name: str
    model_version: str
    started_at: datetime
    seen_at: datetime


class Readiness(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str]
    workers: list[WorkerOut] = Field(description="worker processes that reported within FERVID_STALE_AFTER_S: "
                                     "detail, not part of readiness")
    warnings: list[str] = Field(description="e.g. a worker running the Haar cascade instead of YuNet")


class Cursor(BaseModel):
    """An opaque position for keyset pagination: URL-safe base64 of compact JSON, validated on the way back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def encode(self) -> str:
        raw = self.model_dump_json().encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, cursor: str) -> Self:
        """The cursor's position, or InvalidRequest for a cursor this API did not hand out."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            return cls.model_validate(json.loads(raw))
        # RecursionError: JSON nested deeper than the parser's stack.
        except (binascii.Error, ValueError, ValidationError, UnicodeDecodeError, RecursionError) as error:
            raise InvalidRequest("the cursor is not one this API returned; start again without it") from error


class TimelineCursor(Cursor):
    frame_index: int = Field(ge=0, le=INT32_MAX)


class JobListCursor(Cursor):
    created_at: datetime
    job_id: str = Field(max_length=36)

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        try:
            return as_utc(value)
        except OverflowError as error:  # e.g. year 1 at +14:00 has no UTC time
            raise ValueError("created_at is out of range") from error

    @field_validator("job_id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        return _check_printable(value, "job_id")


class MediaLink(BaseModel):
    url: str = Field(description="the job's media, for elements that cannot send a header (<video>, <img>); "
                                 "answers HTTP Range requests")
    expires_at: datetime
