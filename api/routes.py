"""The routes: thin, they authenticate, validate and call fervid.jobs / fervid.results."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from api.auth import SessionDep, SettingsDep, TenantDep
from api.errors import error_response
from api.schemas import (
    INT32_MAX,
    INT32_MIN,
    ErrorBody,
    Health,
    JobFromUri,
    JobListCursor,
    JobOptions,
    JobOut,
    JobPage,
    JobStatusName,
    Readiness,
    Summary,
    TimelineCursor,
    TimelinePage,
    WebhookKey,
    WebhookSigningKey,
    WorkerOut,
)
from api.uploads import FORM_OVERHEAD_BYTES, read_json, read_multipart
from fervid import jobs, results
from fervid.db import get_engine, session_scope
from fervid.errors import (
    EMPTY_MEDIA,
    NOT_CONFIGURED,
    NOT_READY,
    UNSUPPORTED_MEDIA,
    UNSUPPORTED_MEDIA_TYPE,
    FervidError,
    InvalidRequest,
    MediaError,
)
from fervid.media_store import storage_from_url
from fervid.queue import celery_app
from fervid.settings import Settings
from fervid.tables import Job
from fervid.upload_check import HEAD_BYTES, not_media_reason
from fervid.utc import utc_now
from fervid.webhooks import (
    SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE_S,
    signing_secrets,
    tenant_signing_keys,
)
from fervid.worker_status import live_workers, worker_to_dict

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
ModelT = TypeVar("ModelT", bound=BaseModel)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no API key, or not a valid one"},
    404: {"model": ErrorBody, "description": "no such job for this tenant"},
    422: {"model": ErrorBody, "description": "invalid parameters"},
}

ERRORS[429] = {"model": ErrorBody, "description": "too many requests with this key, or failed authentications "
               "from this address, in a minute; see Retry-After"}
v1 = APIRouter(prefix="/v1", tags=["jobs"], responses={401: ERRORS[401], 422: ERRORS[422], 429: ERRORS[429]})
health = APIRouter(tags=["health"])


def _job_out(session: Session, job: Job) -> JobOut:
    return JobOut.model_validate(jobs.job_to_dict(session, job))


def _validated(model: type[ModelT], payload: Any) -> ModelT:
    """Pydantic validation of a body read by hand, answered like FastAPI's own validation (422 envelope)."""
    if not isinstance(payload, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from error


# Uploads are stored without the user's file name or suffix: workers tell the format by content, so a suffix can
# never steer FFmpeg to a demuxer (an .m3u8 playlist, a concat list) that opens other files or URLs.
STORED_MEDIA_NAME = "media"


def _display_name(filename: str | None) -> str | None:
    # Shown back to the tenant only; PostgreSQL refuses NUL in text.
    shown = "".join(char for char in filename or "" if char.isprintable())[:255]
    return shown or None


def _submit_upload(session: Session, tenant: str, form: FormData, settings: Settings) -> tuple[Job, bool]:
    fields = {name: value for name, value in form.multi_items()
              if name != "file" and isinstance(value, str) and value.strip()}
    options = _validated(JobOptions, fields)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("a multipart submission needs the media in a `file` part")
    if not upload.size:
        raise MediaError(EMPTY_MEDIA, f"the uploaded file {upload.filename or ''!r} is empty (0 bytes); "
                         "send the video or image itself")
    head = upload.file.read(HEAD_BYTES)
    upload.file.seek(0)
    if (what := not_media_reason(head)) is not None:
        raise MediaError(UNSUPPORTED_MEDIA, f"the uploaded file {_display_name(upload.filename) or ''!r} is {what}, "
                         "not a video or an image")
    token = options.client_request_token
    if token is not None and (existing := jobs.job_by_token(session, tenant, token)):
        return existing, False  # a retried upload is not stored twice
    job_id = jobs.new_job_id()
    key = f"{job_id}/{STORED_MEDIA_NAME}"
    storage = storage_from_url(settings.storage_url)
    uri = storage.save(key, upload.file, settings.max_upload_mb << 20)
    try:
        job, created = jobs.create_job(
            session, tenant=tenant, queue=settings.queue, source_uri=uri, sample_fps=options.sample_fps,
            tasks_per_tenant=settings.tasks_per_tenant, frames_reserved=_frames_reserved(options, settings),
            client_request_token=token, webhook_url=options.webhook_url,
            filename=_display_name(upload.filename), stored_media_key=key, job_id=job_id,
            stored_media_bytes=upload.size, quota=settings.tenant_quota())
    except BaseException:
        storage.delete(key)
        raise
    if not created:
        storage.delete(key)  # a concurrent request with the same token won: keep only its copy
    return job, created


def _frames_reserved(options: JobOptions, settings: Settings) -> int:
    """What the job reserves of its tenant's frames per day until prepared: its declared duration (else
    FERVID_RESERVED_DURATION_S), at most the service's longest, at its rate."""
    declared = options.max_duration_s or settings.reserved_duration_s
    return jobs.reserved_frames(options.sample_fps, min(declared, settings.max_duration_s))


def _refuse_upload_past_quota(session: Session, tenant: str, declared_bytes: int, settings: Settings) -> None:
    """The tenant's quota, looked at before an upload's body is read: past its active jobs, past its stored bytes with
    the declared Content-Length, or with no frame left today, an upload is refused before it is received and stored.
    Its form fields (and so its own reservation) come with the body: the check create_job makes under the tenant's
    lock, after, is the rule."""
    try:
        jobs.refuse_past_quota(session, tenant, settings.tenant_quota(), declared_bytes, new_frames=1)
    finally:
        session.rollback()  # ends the read-only transaction: the request's session is used again after the upload


SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary", "description": "a video or image"},
                               **JobOptions.model_json_schema()["properties"]}}},
            "application/json": {"schema": JobFromUri.model_json_schema()},
        },
    }
}


@v1.post(
    "/jobs", status_code=202, response_model=JobOut, openapi_extra=SUBMIT_BODY,
    summary="Submit a video or image for analysis",
    description="Multipart upload (`file` plus form fields) or JSON with a `source_uri` (file://, s3://, "
                "http(s)://). 202 with the queued job; 200 with the existing job when `client_request_token` "
                "was used before by this tenant.",
    responses={200: {"model": JobOut, "description": "the job already submitted with this client_request_token"},
               429: {"model": ErrorBody, "description": "past a quota: active jobs, stored media or frames a day"},
               400: {"model": ErrorBody, "description": "a malformed body"},
               413: {"model": ErrorBody, "description": "the upload exceeds FERVID_MAX_UPLOAD_MB"},
               415: {"model": ErrorBody, "description": "neither multipart/form-data nor JSON"}},
)
async def submit_job(request: Request, tenant: TenantDep, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        declared = request.headers.get("content-length", "")
        declared_file_bytes = max(0, int(declared) - FORM_OVERHEAD_BYTES) if declared.isdigit() else 0
        await run_in_threadpool(_refuse_upload_past_quota, session, tenant, declared_file_bytes, settings)
        form = await read_multipart(request, settings.max_upload_mb << 20)
        try:
            job, created = await run_in_threadpool(_submit_upload, session, tenant, form, settings)
        finally:
            await form.close()
    elif content_type == "application/json":
        spec = _validated(JobFromUri, await read_json(request))
        # file:// and s3:// sources read what the workers can read: only inside the tenant's own locations.
        settings.source_fence(tenant).check(spec.source_uri)
        job, created = await run_in_threadpool(
            lambda: jobs.create_job(session, tenant=tenant, queue=settings.queue, source_uri=spec.source_uri,
                                    sample_fps=spec.sample_fps, tasks_per_tenant=settings.tasks_per_tenant,
                                    frames_reserved=_frames_reserved(spec, settings),
                                    client_request_token=spec.client_request_token,
                                    webhook_url=spec.webhook_url, quota=settings.tenant_quota()))
    else:
        raise FervidError("send multipart/form-data with a `file` part, or application/json with a `source_uri`",
                          code=UNSUPPORTED_MEDIA_TYPE, http_status=415)
    body = await run_in_threadpool(_job_out, session, job)
    return JSONResponse(body.model_dump(mode="json"), status_code=202 if created else 200)


@v1.get("/jobs", response_model=JobPage, summary="List your jobs, newest first")
def list_jobs(tenant: TenantDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
              status: Annotated[JobStatusName | None, Query(description="only jobs in this status")] = None,
              ) -> JobPage:
    before = None
    if cursor:
        position = JobListCursor.decode(cursor)
        before = (position.created_at, position.job_id)
    page, next_key = jobs.list_jobs(session, tenant, limit=limit, status=status, before=before)
    done = jobs.frames_done_by_job(session, [job.id for job in page])
    items = [JobOut.model_validate(jobs.job_to_dict(session, job, done.get(job.id, 0))) for job in page]
    next_cursor = JobListCursor(created_at=next_key[0], job_id=next_key[1]).encode() if next_key else None
    return JobPage(items=items, next_cursor=next_cursor)


@v1.get("/jobs/{job_id}", response_model=JobOut, summary="A job's status, progress, media and error",
        responses={404: ERRORS[404]})
def get_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobOut:
    return _job_out(session, jobs.get_job(session, tenant, job_id))


@v1.get("/jobs/{job_id}/timeline", response_model=TimelinePage, responses={404: ERRORS[404]},
        summary="Per-frame faces and emotions, in time order (keyset-paginated)")
def get_timeline(
    job_id: str, tenant: TenantDep, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="frames per page; a page also ends before it would "
                                f"hold more than {results.MAX_PAGE_FACES} faces")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    from_ms: Annotated[float | None, Query(ge=0, description="only frames at or after this time")] = None,
    to_ms: Annotated[float | None, Query(ge=0, description="only frames at or before this time")] = None,
    track_id: Annotated[int | None, Query(ge=INT32_MIN, le=INT32_MAX,
                                          description="only frames where this track appears, with just it")] = None,
) -> TimelinePage:
    jobs.get_job(session, tenant, job_id)
    after = TimelineCursor.decode(cursor).frame_index if cursor else None
    items, last = results.timeline_page(session, job_id, limit=limit, after_frame=after, from_ms=from_ms,
                                        to_ms=to_ms, track_id=track_id)
    next_cursor = TimelineCursor(frame_index=last).encode() if last is not None else None
    return TimelinePage.model_validate({"job_id": job_id, "items": items, "next_cursor": next_cursor})


@v1.get("/jobs/{job_id}/timeline.csv", response_class=StreamingResponse, summary="The timeline as CSV",
        responses={200: {"content": {"text/csv": {}}, "description": "one row per face; a frame without faces "
                         "is one row with empty face fields"}, 404: ERRORS[404]})
def get_timeline_csv(job_id: str, tenant: TenantDep, session: SessionDep) -> StreamingResponse:
    jobs.get_job(session, tenant, job_id)
    # Each batch reads in a session of its own: the response streams after the request's session has closed.
    return StreamingResponse(results.timeline_csv_lines(job_id), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})


@v1.get("/jobs/{job_id}/summary", response_model=Summary, responses={404: ERRORS[404]},
        summary="Mean emotions per track and over the whole job",
        description="Computed once when the job has finished (and then served as stored); while it runs, from the "
                    "frames stored so far.")
def get_summary(job_id: str, tenant: TenantDep, session: SessionDep,
                faces: Annotated[Literal["reliable", "all"], Query(
                    description="reliable: only faces whose emotions can be trusted (the default); all: every face")]
                = "reliable") -> Summary:
    job = jobs.get_job(session, tenant, job_id)
    return Summary.model_validate(results.job_summary(session, job, reliable_only=faces == "reliable"))


@v1.get("/jobs/{job_id}/plot.png", response_class=Response, summary="A chart of each track's emotions over time",
        responses={200: {"content": {"image/png": {}}, "description": "a swimlane of each track's dominant "
                         "emotion, then per track its 7 probabilities stacked over time (at most "
                         f"{results.MAX_PLOT_TRACKS} tracks of at most {results.MAX_PLOT_POINTS} points: a long "
                         "video's are averaged over stretches of time)"},
                   404: ERRORS[404]})
def get_plot(job_id: str, tenant: TenantDep, session: SessionDep) -> Response:
    # A plain `def` route: FastAPI runs it in a worker thread, so rendering never blocks the event loop.
    return Response(results.job_plot_png(session, jobs.get_job(session, tenant, job_id)), media_type="image/png")


@v1.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued, preparing or running job",
         responses={404: ERRORS[404], 409: {"model": ErrorBody, "description": "the job already finished"}})
def cancel_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobOut:
    # The webhook it owes is sent once the cancel commits (fervid.lifecycle), by whichever worker takes it.
    return _job_out(session, jobs.cancel_job(session, jobs.get_job(session, tenant, job_id)))


@v1.delete("/jobs/{job_id}", status_code=204, response_class=Response, responses={404: ERRORS[404]},
           summary="Delete a job, its results and its uploaded media")
def delete_job(job_id: str, tenant: TenantDep, session: SessionDep, settings: SettingsDep) -> Response:
    jobs.delete_job(session, jobs.get_job(session, tenant, job_id), storage_from_url(settings.storage_url))
    return Response(status_code=204)


@v1.get("/webhook-signing-key", response_model=WebhookSigningKey,
        responses={404: {"model": ErrorBody, "description": "webhooks are not signed (no FERVID_WEBHOOK_SECRETS)"}},
        summary="The keys your job webhooks are signed with")
def get_webhook_signing_key(tenant: TenantDep, settings: SettingsDep) -> WebhookSigningKey:
    keys = tenant_signing_keys(signing_secrets(settings), tenant)
    if not keys:
        raise FervidError("webhooks are not signed on this service (the operator has not set "
                          "FERVID_WEBHOOK_SECRETS)", code=NOT_CONFIGURED, http_status=404)
    scheme = ('"t=<unix seconds>,kid=<id>,v1=<hex>", then a kid,v1 pair per older key during a rotation: v1 is '
              'HMAC-SHA256 under the key of that kid of "<t>." followed by the raw body; accept when the v1 of a kid '
              f"you hold matches and t is within {SIGNATURE_TOLERANCE_S} s of now")
    (kid, key), *_ = keys
    return WebhookSigningKey(header=SIGNATURE_HEADER, scheme=scheme, kid=kid, key=key.hex(),
                             keys=[WebhookKey(kid=kid, key=key.hex()) for kid, key in keys])


@health.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:  # async: answered on the event loop, never queued behind busy pool threads
    return Health(status="ok")


def _ping_database() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def _ping_broker() -> None:
    # A real connection through Celery's own transport, so any broker it speaks (Redis, RabbitMQ, ...) is checked.
    with celery_app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=READY_TIMEOUT_S)


async def _check(ping: Callable[[], None]) -> str:
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await anyio.to_thread.run_sync(ping, abandon_on_cancel=True)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g} s"
    except Exception as error:  # any failure means not ready
        # The detail (hosts, users) goes to the log only: /readyz answers without a key.
        log.warning("readiness check failed: %s", error)
        return f"unreachable ({type(error).__name__})"
    return "ok"


def _worker_details(stale_after_s: float) -> tuple[list[WorkerOut], list[str]]:
    """The workers that reported recently (what they run), and a warning for each one running the Haar cascade."""
    seen_since = utc_now() - timedelta(seconds=stale_after_s)
    try:
        with session_scope() as session:
            workers = [WorkerOut.model_validate(worker_to_dict(row)) for row in live_workers(session, seen_since)]
    except Exception as error:  # detail only: readiness is the database and the broker answering
        log.warning("could not read the workers' status: %s", error)
        return [], [f"could not read the workers' status ({type(error).__name__})"]
    warnings = [f"worker {worker.name} runs the Haar cascade, which finds fewer faces than YuNet "
                f"({worker.detector_reason}); run `fervid models fetch` on its host or set FERVID_DETECTOR_PATH there"
                for worker in workers if worker.detector == "haar"]
    return workers, warnings


@health.get("/readyz", response_model=Readiness, summary="Readiness: the database and the broker answer",
            responses={503: {"model": ErrorBody, "description": "the database or the broker does not answer"}})
async def readyz(settings: SettingsDep) -> Any:
    checks: dict[str, str] = {}

    async def run(name: str, ping: Callable[[], None]) -> None:
        checks[name] = await _check(ping)

    async with anyio.create_task_group() as group:
        group.start_soon(run, "database", _ping_database)
        group.start_soon(run, "broker", _ping_broker)
    checks = {name: checks[name] for name in ("database", "broker")}
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    if not failed:
        workers, warnings = await anyio.to_thread.run_sync(_worker_details, settings.stale_after_s,
                                                           abandon_on_cancel=True)
        return Readiness(status="ok", checks=checks, workers=workers, warnings=warnings)
    log.warning("not ready: %s", checks)
    return error_response(503, NOT_READY, "; ".join(f"{name}: {checks[name]}" for name in failed), checks=checks)
