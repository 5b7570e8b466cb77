"""Frame stills: the sampled frames the viewer shows for media a browser cannot play.

The API never downloads or decodes a still: a frame of a long stream timed by order, a large photo or an http source
fetched again would hold a request thread, and whatever the decoder holds, for as long as it takes, and the API has
neither the decoders' process isolation nor their limits. Asked for a still it does not have, the API asks a worker
(worker/still_render.py, on the job queue's stills queue) and answers 202; the worker stores the JPEG, or the reason
there is none, in the job's folder of the media store, which is deleted with the job; the API then serves it.
"""

from __future__ import annotations

JPEG_QUALITY = 85
MAX_STILL_BYTES = 32 << 20  # a 40-megapixel frame at JPEG_QUALITY is well under this


def still_key(job_id: str, frame_index: int) -> str:
    return f"{job_id}/stills/{frame_index}.jpg"


def still_failure_key(job_id: str, frame_index: int) -> str:
    """Where a worker that could not render the still says why: {"code": ..., "message": ...}."""
    return f"{job_id}/stills/{frame_index}.error.json"
