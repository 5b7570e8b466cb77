"""Exception handlers: every error leaves the API as {"error": {"code", "message"}}, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fervid.errors import (
    BAD_REQUEST,
    DATABASE_UNAVAILABLE,
    HTTP_ERROR,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
    FervidError,
    TooManyRequests,
)

log = logging.getLogger(__name__)

# Starlette's own errors (unknown route, wrong method, malformed multipart...) get codes by status.
CODES_BY_STATUS = {400: BAD_REQUEST, 401: UNAUTHORIZED, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED,
                   413: PAYLOAD_TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE, 422: INVALID_REQUEST}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status,
                        headers=dict(headers) if headers else None)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """'sample_fps: Input should be less than or equal to 120; ...' from pydantic's error list."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "the request is not valid"


async def _fervid_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FervidError)
    headers = {"WWW-Authenticate": "Bearer"} if error.http_status == 401 else None
    if isinstance(error, TooManyRequests):
        headers = {"Retry-After": str(error.retry_after_s)}
    if error.http_status >= 500:
        log.error("%s: %s", error.code, error.message)
    return error_response(error.http_status, error.code, error.message, headers)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(422, INVALID_REQUEST, describe_validation_errors(error.errors()))


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    default = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    message = error.detail if isinstance(error.detail, str) and error.detail != default else {
        404: "no such route; the API is described at /docs",
        405: "this route does not accept that method; see /docs",
    }.get(status, str(error.detail))
    code = CODES_BY_STATUS.get(status, HTTP_ERROR if status < 500 else INTERNAL_ERROR)
    return error_response(status, code, message, error.headers)


DATABASE_RETRY_AFTER_S = 5


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    # A restart or a network cut, not a bug: the pool reconnects on the next request (pool_pre_ping).
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, str(error).splitlines()[0])
    return error_response(503, DATABASE_UNAVAILABLE, "the database does not answer (restarting or unreachable); "
                          f"retry in {DATABASE_RETRY_AFTER_S} s", {"Retry-After": str(DATABASE_RETRY_AFTER_S)})


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, INTERNAL_ERROR, "the server hit an unexpected error; retry, and report it if it "
                          "happens again")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FervidError, _fervid_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Connection-level failures only (OperationalError covers a refused or dropped connection); not IntegrityError.
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _database_unavailable)
    app.add_exception_handler(sqlalchemy.exc.InterfaceError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
