"""Frame stills on the API's side: served from the media store, asked of a worker when missing (fervid/stills.py).

Nothing here downloads or decodes. A still that is not stored yet is asked for once (a pending mark in Redis dedupes
the viewer's retries and those of many clients), and a tenant has at most MAX_PENDING_PER_TENANT asked for at once,
so one tenant cannot fill the stills queue ahead of everyone else's.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from fervid.errors import MediaError, TooManyRequests
from fervid.media_store import Storage
from fervid.queue import send_render_still
from fervid.stills import MAX_STILL_BYTES, still_failure_key, still_key

log = logging.getLogger(__name__)

PENDING_KEY = "fervid:stills-pending"
# A still asked for and not served within this is asked for again: its worker may have died on it.
PENDING_S = 120
MAX_PENDING_PER_TENANT = 8
RETRY_AFTER_S = 1  # what a 202 tells the viewer to wait before asking again


def stored_still(storage: Storage, job_id: str, frame_index: int) -> bytes | None:
    """The rendered JPEG; None while no worker has rendered it; the worker's MediaError when it could not."""
    jpeg = storage.read(still_key(job_id, frame_index), MAX_STILL_BYTES)
    if jpeg is not None:
        return jpeg
    failure = storage.read(still_failure_key(job_id, frame_index), MAX_STILL_BYTES)
    if failure is None:
        return None
    reason = json.loads(failure)
    raise MediaError(str(reason["code"]), str(reason["message"]))


def ask_for_still(connection: redis.Redis | None, tenant: str, job_id: str, frame_index: int, queue: str) -> None:
    """Sends the render task, unless this still was asked for within PENDING_S; TooManyRequests when the tenant has
    MAX_PENDING_PER_TENANT other stills pending. Without Redis every call sends (renders are idempotent)."""
    if connection is not None and not _mark_pending(connection, tenant, f"{job_id}/{frame_index}"):
        return
    send_render_still(job_id, frame_index, queue)


def forget_pending(connection: redis.Redis | None, tenant: str, job_id: str, frame_index: int) -> None:
    """The still was served: it no longer counts against its tenant."""
    if connection is None:
        return
    try:
        connection.zrem(f"{PENDING_KEY}:{tenant}", f"{job_id}/{frame_index}")
    except redis.RedisError as error:
        log.warning("stills: could not clear a pending mark (%s); it lapses after %d s", error, PENDING_S)


def _mark_pending(connection: redis.Redis, tenant: str, member: str) -> bool:
    """True when this call marked `member` pending (its task is to be sent), False when it was already."""
    key, now = f"{PENDING_KEY}:{tenant}", time.time()
    try:
        pipeline = connection.pipeline()
        pipeline.zremrangebyscore(key, "-inf", now - PENDING_S)
        pipeline.zscore(key, member)
        pipeline.zcard(key)
        _, asked, pending = pipeline.execute()
        if asked is not None:
            return False
        if pending >= MAX_PENDING_PER_TENANT:
            raise TooManyRequests(f"{pending} frame stills of yours are being rendered; retry in a moment",
                                  retry_after_s=RETRY_AFTER_S)
        pipeline = connection.pipeline()
        pipeline.zadd(key, {member: now}, nx=True)
        pipeline.expire(key, PENDING_S)
        added, _ = pipeline.execute()
        return bool(added)  # 0: a concurrent request marked it first and sends the task
    except redis.RedisError as error:
        log.warning("stills: no pending marks in Redis (%s): asking a worker on every request", error)
        return True
