"""One error type with a code: what happened and what to do next, never a bare traceback.

Every error code is written here once; the rest of the product names these constants. Clients match on the
values, so a value never changes.
"""

from __future__ import annotations

import errno

# Request and service errors.
INTERNAL_ERROR = "internal_error"  # a bug or an outage; retry, and report it if it happens again
BAD_REQUEST = "bad_request"  # a body that cannot be parsed (malformed multipart or JSON)
INVALID_REQUEST = "invalid_request"  # a parsed request (or command-line option) with invalid values
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
CONFLICT = "conflict"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # the request's Content-Type, not the media
HTTP_ERROR = "http_error"  # any other 4xx Starlette raises
NOT_CONFIGURED = "not_configured"  # a feature the operator has not turned on (metrics, webhook signing)
NOT_READY = "not_ready"  # /readyz: the database or the broker does not answer
DATABASE_UNAVAILABLE = "database_unavailable"  # the database is restarting or unreachable; retry after Retry-After
RATE_LIMITED = "rate_limited"  # too many requests (or failed authentications) in a minute; see Retry-After
QUOTA_EXCEEDED = "quota_exceeded"  # the tenant has as many queued and running jobs as FERVID_MAX_ACTIVE_JOBS
JOB_FAILED = "job_failed"  # a job that ended without success and without a code of its own

# Media error codes: a job fails with one of these.
UNSUPPORTED_MEDIA = "unsupported_media"  # not a video or image we can decode (or audio only)
EMPTY_MEDIA = "empty_media"  # zero bytes, or a container with no frames
MEDIA_TOO_LARGE = "media_too_large"  # frame pixels or duration past the limits (decompression bombs)
DECODE_ERROR = "decode_error"  # a recognised container whose frames cannot be decoded
SOURCE_UNAVAILABLE = "source_unavailable"  # the source URI cannot be read by the worker
DISK_FULL = "disk_full"  # the machine's disk is full: nothing about the media; workers retry later, the API says 507
SOURCE_NOT_ALLOWED = "source_not_allowed"  # the source names a place workers may not read for tenants
PROCESSING_FAILED = "processing_failed"  # the media killed or outlasted a worker on every attempt (FERVID_MAX_ATTEMPTS)

# Models and inference backends.
BACKEND_UNAVAILABLE = "backend_unavailable"  # an inference backend cannot run here
UNKNOWN_BACKEND = "unknown_backend"  # FERVID_BACKEND names no backend
INVALID_BATCH_PROFILE = "invalid_batch_profile"
ENGINE_BUILD_TIMEOUT = "engine_build_timeout"
DEMO_MEDIA_MISSING = "demo_media_missing"
# Face detectors (models/detectors.py).
DETECTOR_UNAVAILABLE = "detector_unavailable"
DOWNLOAD_FAILED = "download_failed"
CHECKSUM_MISMATCH = "checksum_mismatch"

# The offline bench (training, export, evaluation, quantization).
CHECKPOINT_NOT_FOUND = "checkpoint_not_found"
INVALID_CHECKPOINT = "invalid_checkpoint"
INVALID_MODEL = "invalid_model"
DATA_NOT_FOUND = "data_not_found"
EXPORT_FAILED = "export_failed"
EXPORT_MISMATCH = "export_mismatch"


class FervidError(Exception):
    """An error a user can act on. `code` is stable and machine-readable; `message` is for people."""

    code = INTERNAL_ERROR
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status


class MediaError(FervidError):
    """The input media cannot be analysed; the job fails with this code and nothing else is affected."""

    http_status = 422

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class NotFound(FervidError):
    code = NOT_FOUND
    http_status = 404


class Unauthorized(FervidError):
    code = UNAUTHORIZED
    http_status = 401


class InvalidRequest(FervidError):
    code = INVALID_REQUEST
    http_status = 422


class PayloadTooLarge(FervidError):
    code = PAYLOAD_TOO_LARGE
    http_status = 413


class TooManyRequests(FervidError):
    """429: answered with a Retry-After header of `retry_after_s`."""

    code = RATE_LIMITED
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Conflict(FervidError):
    code = CONFLICT
    http_status = 409


class DiskFull(FervidError):
    """A write failed because the disk is full (ENOSPC): an outage of the machine, not a fault of the media, so a
    worker retries it later and the API answers 507."""

    code = DISK_FULL
    http_status = 507


def disk_full_cause(error: BaseException) -> OSError | None:
    """The ENOSPC (or EDQUOT) somewhere in `error`'s chain of causes, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
