"""GET /v1/jobs/{job_id}/annotated.mp4: a succeeded job's video with its faces and emotions drawn on it.

The API only asks for it and serves it: a worker renders it (fervid/annotated.py, worker/annotate.py) while the route
answers 202 with the worker's progress.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from api.auth import SettingsDep, TenantDep
from api.routes import ERRORS
from api.schemas import ErrorBody
from api.viewer import stored_file_response
from fervid import annotated, jobs
from fervid.db import session_scope
from fervid.errors import Conflict, FervidError
from fervid.lifecycle import JobStatus
from fervid.queue import send_render_annotated

RETRY_AFTER_S = 2

annotated_v1 = APIRouter(prefix="/v1", tags=["jobs"])


@annotated_v1.get(
    "/jobs/{job_id}/annotated.mp4", response_class=FileResponse,
    summary="The job's video with each face's box, track id, top emotion and its seven probabilities drawn on it "
            "(H.264 MP4; 202 while a worker renders it; answers HTTP Range requests)",
    responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "the byte range asked for"},
               202: {"description": "a worker is rendering it: ask again after Retry-After; the body says how far "
                                    "it is (frames_done of frames_total)"},
               401: ERRORS[401], 404: ERRORS[404],
               409: {"model": ErrorBody, "description": "the job has not succeeded, or is of a still image"},
               422: {"model": ErrorBody, "description": "the video could not be rendered: the error says why"},
               429: ERRORS[429]})
def get_annotated_video(job_id: str, tenant: TenantDep, settings: SettingsDep) -> Response:
    with session_scope() as session:
        job = jobs.get_job(session, tenant, job_id)
        if job.status != JobStatus.succeeded:
            raise Conflict(f"job {job_id} is {job.status}: its annotated video is drawn from its results once it "
                           "has succeeded")
        if job.media_kind != "video":
            raise Conflict(f"job {job_id} is of a still image: its faces are in its timeline, and the viewer draws "
                           "them")
        render = annotated.request(session, job, settings.stale_after_s, settings.tenant_quota().max_stored_bytes)
        queue, duration_ms, name = job.queue, job.duration_ms, job.filename or job_id
    if render.started:  # after the request's commit, so the worker finds it
        send_render_annotated(job_id, render.token, queue, *annotated.render_limits_s(duration_ms))
    if render.status == annotated.RenderStatus.failed:
        raise FervidError(render.error_message or "the annotated video could not be rendered",
                          code=render.error_code, http_status=422)
    if render.status == annotated.RenderStatus.rendering or render.stored_uri is None:
        return JSONResponse({"status": "rendering", "frames_done": render.frames_done,
                             "frames_total": render.frames_total, "retry_after_s": RETRY_AFTER_S},
                            status_code=202, headers={"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"})
    download_name = f"{PurePosixPath(name).stem or job_id}-annotated.mp4"
    return stored_file_response(tenant, job_id, render.stored_uri, settings, media_type="video/mp4",
                                download_name=download_name)
