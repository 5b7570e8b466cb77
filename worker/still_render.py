"""Frame stills rendered by workers (fervid/stills.py says why the API never decodes them itself).

The one frame is decoded as a segment decodes it: in a decoder process under the decoders' memory and CPU limits,
seeking or starting at the restart point before it, turned upright and mirrored as the analysis saw it, so that the
timeline's boxes fall where they belong. The JPEG, or the reason there is none, goes to the job's folder in the media
store.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import cv2

from fervid import results
from fervid.db import session_scope
from fervid.errors import DECODE_ERROR, MediaError
from fervid.media_store import Downloads, local_copy, storage_from_url
from fervid.sampling import PlannedFrame
from fervid.settings import Settings
from fervid.stills import JPEG_QUALITY, MAX_STILL_BYTES, still_failure_key, still_key
from fervid.tables import Job
from worker.media.isolated import DecoderLimits, IsolatedDecode

log = logging.getLogger(__name__)


def render_still(job_id: str, frame_index: int, settings: Settings, cpu_s: float) -> None:
    """Stores the still of the job's sampled frame `frame_index`, or why it cannot be made; nothing for a job or frame
    that is gone (deleted meanwhile, or never sampled: the API checks before it asks)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        planned = results.planned_frame(session, job_id, frame_index) if job is not None else None
        if job is None or planned is None:
            return
        uri, fence = job.source_uri, settings.job_source_fence(job)
    storage = storage_from_url(settings.storage_url)
    try:
        with local_copy(uri, Downloads.from_settings(settings), cache_key=job_id, fence=fence) as path:
            jpeg = still_jpeg(path, planned, settings.max_pixels, DecoderLimits(settings.decode_memory_mb, cpu_s))
        storage.save(still_key(job_id, frame_index), io.BytesIO(jpeg), MAX_STILL_BYTES)
    except MediaError as error:
        record_failure(job_id, frame_index, error.code, str(error), settings)
    with session_scope() as session:
        if session.get(Job, job_id) is None:  # deleted while this rendered: its folder is gone, and stays so
            storage.delete_folder(job_id)


def record_failure(job_id: str, frame_index: int, code: str, message: str, settings: Settings) -> None:
    """Stores why the still cannot be made: the API answers that from then on, instead of asking again."""
    log.info("job %s: no still of frame %d: %s", job_id, frame_index, message)
    failure = json.dumps({"code": code, "message": message}).encode()
    storage_from_url(settings.storage_url).save(still_failure_key(job_id, frame_index), io.BytesIO(failure),
                                                MAX_STILL_BYTES)


def still_jpeg(path: Path, planned: PlannedFrame, max_pixels: int, decoder: DecoderLimits) -> bytes:
    """The planned frame of the media at `path`, upright as analysed, as JPEG bytes."""
    decoded = next(iter(IsolatedDecode(path, [planned], [], max_pixels, decoder)), None)
    if decoded is None:
        raise MediaError(DECODE_ERROR, f"frame {planned.frame_index} could not be decoded from the media")
    encoded, jpeg = cv2.imencode(".jpg", decoded[1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not encoded:
        raise MediaError(DECODE_ERROR, f"frame {planned.frame_index} could not be encoded as JPEG")
    return bytes(jpeg.tobytes())
