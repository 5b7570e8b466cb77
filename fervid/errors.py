"""One error type with a code: what happened and what to do next, never a bare traceback."""

from __future__ import annotations


class FervidError(Exception):
    """An error a user can act on. `code` is stable and machine-readable; `message` is for people."""

    code = "internal_error"
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
    code = "not_found"
    http_status = 404


class Unauthorized(FervidError):
    code = "unauthorized"
    http_status = 401


class InvalidRequest(FervidError):
    code = "invalid_request"
    http_status = 422


class PayloadTooLarge(FervidError):
    code = "payload_too_large"
    http_status = 413


class Conflict(FervidError):
    code = "conflict"
    http_status = 409


# Media error codes, written once.
UNSUPPORTED_MEDIA = "unsupported_media"  # not a video or image we can decode (or audio only)
EMPTY_MEDIA = "empty_media"  # zero bytes, or a container with no frames
MEDIA_TOO_LARGE = "media_too_large"  # frame pixels or duration past the limits (decompression bombs)
DECODE_ERROR = "decode_error"  # a recognised container whose frames cannot be decoded
SOURCE_UNAVAILABLE = "source_unavailable"  # the source URI cannot be read by the worker
SOURCE_NOT_ALLOWED = "source_not_allowed"  # the source names a place workers may not read for tenants
