"""The viewer page at `/` (static HTML, JavaScript and SVG, no build step) and the routes only it needs: the emotion
palette, a job's media (HTTP Range, for <video>) and single sampled frames as JPEG (for media a browser cannot
play)."""

from __future__ import annotations

import mimetypes
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from api.auth import AuthGuard, SessionDep, SettingsDep, TenantDep, authenticate, bearer, keys_of
from api.limits import limits_redis
from api.media_fetch import RETRY_AFTER_S as FETCH_RETRY_AFTER_S
from api.media_fetch import media_fetcher
from api.media_links import key_for_media_token, link_secret, media_token
from api.routes import ERRORS
from api.schemas import MediaLink
from api.stills import RETRY_AFTER_S as STILL_RETRY_AFTER_S
from api.stills import ask_for_still, forget_pending, stored_still
from fervid import jobs, results
from fervid.api_keys import key_digest
from fervid.db import session_scope
from fervid.errors import NotFound, Unauthorized
from fervid.labels import EMOTION_COLOURS, EMOTIONS, TRACK_COLOURS
from fervid.lifecycle import ACTIVE_JOB_STATUSES, JobStatus
from fervid.media_store import Downloads, cached_download, is_remote, local_copy, storage_from_url
from fervid.settings import Settings
from fervid.sources import SourceFence

STATIC_DIR = Path(__file__).with_name("static")
MEDIA_LINK_TTL_S = 6 * 3600  # the longest video the service accepts, played through once
PAGE_HEADERS = {"Cache-Control": "no-cache"}  # the rest come from api/security_headers.py
# A job's media is data: opened directly it is downloaded, never rendered as a page, whatever it holds.
MEDIA_HEADERS = {"Cache-Control": "private, max-age=3600", "Content-Disposition": "attachment",
                 "Content-Security-Policy": "default-src 'none'; sandbox"}
# Image types a browser may run script in (SVG is a document): served as bytes like any non-media.
SCRIPTABLE_IMAGE_TYPES = {"image/svg+xml"}

page = APIRouter(include_in_schema=False)
viewer_v1 = APIRouter(prefix="/v1", tags=["viewer"], responses={401: ERRORS[401], 404: ERRORS[404]})


class HeldFileResponse(FileResponse):
    """A FileResponse whose path is valid only while `held` is open (held_file's /proc/self/fd/N): closed once the
    response is sent or abandoned. Without pathsend, which would have the server open the path after that."""

    def __init__(self, held: ExitStack, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = {name: value for name, value in scope.get("extensions", {}).items()
                      if name != "http.response.pathsend"}
        try:
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self.held.close()


def install_viewer(app: FastAPI) -> None:
    app.include_router(page)
    app.include_router(viewer_v1)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@page.get("/")
def viewer_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@page.get("/viewer/palette.json")
def palette() -> dict[str, object]:
    """The emotions in FER order and their colours (the page draws with the same palette as plot.png), the tracks'
    colours (as annotated videos draw them), and the job statuses with those a job can still leave (the page polls
    and offers Cancel on those): the page keeps no list of its own that could drift from the service's."""
    return {"emotions": list(EMOTIONS), "colours": EMOTION_COLOURS, "track_colours": list(TRACK_COLOURS),
            "statuses": [str(s) for s in JobStatus],
            "active_statuses": [str(s) for s in ACTIVE_JOB_STATUSES]}


def media_tenant(request: Request, job_id: str,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], settings: SettingsDep,
                 token: Annotated[str | None, Query(description="from POST .../media-link")] = None) -> str:
    if token is None:
        return authenticate(request, credentials, settings)
    # A link counts as its key does: against the address when it fails, the key's requests a minute when it passes.
    guard = AuthGuard(request, settings)
    tenants = keys_of(settings).current().tenants_by_digest
    signer = key_for_media_token(token, job_id, link_secret(settings), tenants, time.time())
    if signer is None:
        guard.failed()
        raise Unauthorized("the media link has expired or is not valid; ask for a new one with POST "
                           f"/v1/jobs/{job_id}/media-link")
    tenant, digest = signer
    guard.passed(tenant, digest)
    return tenant


@viewer_v1.post("/jobs/{job_id}/media-link", response_model=MediaLink,
                summary="A link to the job's media for elements that cannot send a header")
def create_media_link(job_id: str, tenant: TenantDep, session: SessionDep, settings: SettingsDep,
                      credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> MediaLink:
    jobs.get_job(session, tenant, job_id)
    assert credentials is not None  # authenticated above
    expires = int(time.time()) + MEDIA_LINK_TTL_S
    token = media_token(link_secret(settings), key_digest(credentials.credentials), job_id, expires)
    return MediaLink(url=f"/v1/jobs/{job_id}/media?token={token}",
                     expires_at=datetime.fromtimestamp(expires, UTC))


def _not_yet(status: str, retry_after_s: int) -> JSONResponse:
    """202: a worker or a background fetch is making what was asked for; ask again after `retry_after_s`."""
    return JSONResponse({"status": status, "retry_after_s": retry_after_s}, status_code=202,
                        headers={"Retry-After": str(retry_after_s), "Cache-Control": "no-store"})


@viewer_v1.get("/jobs/{job_id}/media", response_class=FileResponse,
               summary="The job's media as submitted (answers HTTP Range requests; 202 while remote media is fetched)",
               responses={200: {"content": {"video/*": {}, "image/*": {}}},
                          202: {"description": "remote media is being fetched: ask again after Retry-After"},
                          206: {"description": "the byte range asked for"}})
def get_media(job_id: str, tenant: Annotated[str, Depends(media_tenant)], settings: SettingsDep) -> Response:
    with session_scope() as session:
        source = _job_source(session, tenant, job_id, settings)
    return stored_file_response(tenant, job_id, source.uri, settings, fence=source.fence,
                                media_type=served_media_type(source.name, source.media_kind))


def stored_file_response(tenant: str, job_id: str, uri: str, settings: Settings, *, media_type: str,
                         fence: SourceFence | None = None, download_name: str | None = None) -> Response:
    """A file of the job's (its media, or one a worker stored for it) with HTTP Range: remote ones from this
    machine's download cache once a background fetch put it there (api/media_fetch.py), 202 until then."""
    # With a download name, FileResponse says attachment with it (quoted as RFC 6266 asks, whatever the name holds).
    headers = {name: value for name, value in MEDIA_HEADERS.items()
               if download_name is None or name != "Content-Disposition"}
    if is_remote(uri):
        path = cached_download(uri, settings.download_cache_dir, job_id)
        if path is None:
            media_fetcher.request(tenant, job_id, uri, settings, fence)
            return _not_yet("fetching", FETCH_RETRY_AFTER_S)
        return FileResponse(path, media_type=media_type, headers=headers, filename=download_name)
    # A file: the store's own, or one the tenant named, held open (held_file) until the response is sent.
    held = ExitStack()
    path = held.enter_context(local_copy(uri, Downloads.from_settings(settings), cache_key=job_id, fence=fence))
    return HeldFileResponse(held, path, media_type=media_type, headers=headers, filename=download_name)


def served_media_type(name: str, media_kind: str | None) -> str:
    """The Content-Type a job's media is served with: a video or image type, and only of the kind the worker found
    in it (`media_kind`, None before or without a probe), else application/octet-stream. The name alone is the
    tenant's word: `x.html` holding a page must not become a page on the API's origin."""
    guessed = mimetypes.guess_type(name)[0] or ""
    if media_kind in ("video", "image") and guessed.startswith(f"{media_kind}/") \
            and guessed not in SCRIPTABLE_IMAGE_TYPES:
        return guessed
    return "application/octet-stream"


@viewer_v1.get("/jobs/{job_id}/frames/{frame_index}.jpg", response_class=Response,
               summary="One analysed frame as JPEG, upright as analysed (202 while a worker renders it)",
               responses={200: {"content": {"image/jpeg": {}}},
                          202: {"description": "a worker is rendering the still: ask again after Retry-After"}})
def get_frame_still(job_id: str, frame_index: int, tenant: TenantDep, settings: SettingsDep) -> Response:
    with session_scope() as session:
        queue = jobs.get_job(session, tenant, job_id).queue
        planned = results.planned_frame(session, job_id, frame_index)
    if planned is None:
        raise NotFound(f"frame {frame_index} is not an analysed frame of job {job_id}; the timeline lists them")
    connection = limits_redis(settings.limits_url or settings.broker_url)
    jpeg = stored_still(storage_from_url(settings.storage_url), job_id, frame_index)
    if jpeg is None:
        ask_for_still(connection, tenant, job_id, frame_index, queue)  # stills are rendered by workers
        return _not_yet("rendering", STILL_RETRY_AFTER_S)
    forget_pending(connection, tenant, job_id, frame_index)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@dataclass(frozen=True)
class JobSource:
    """What the media routes need of a job, read in a short transaction that ends before they fetch or decode."""

    uri: str
    name: str
    media_kind: str | None
    fence: SourceFence | None


def _job_source(session: Session, tenant: str, job_id: str, settings: Settings) -> JobSource:
    job = jobs.get_job(session, tenant, job_id)
    return JobSource(job.source_uri, job.filename or PurePosixPath(urlparse(job.source_uri).path).name,
                     job.media_kind, settings.job_source_fence(job))
