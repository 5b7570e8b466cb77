"""Reading a submission's body with a byte budget: an oversize upload is refused as it arrives, not after."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from fervid.errors import BAD_REQUEST, InvalidRequest, PayloadTooLarge

# Room for the multipart boundaries, part headers and the small form fields next to the file.
FORM_OVERHEAD_BYTES = 64 << 10
MAX_JSON_BYTES = 64 << 10


def upload_too_large(max_file_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload exceeds the {max_file_bytes / (1 << 20):g} MB limit "
                           "(FERVID_MAX_UPLOAD_MB); send a smaller file, or a source_uri the workers can read")


def refuse_declared_oversize(request: Request, budget: int, refusal: PayloadTooLarge) -> None:
    """413 from the Content-Length header alone, before a byte of the body is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > budget:
        raise refusal


async def counted_body(request: Request, budget: int, refusal: PayloadTooLarge) -> AsyncGenerator[bytes, None]:
    """The body in the chunks it arrives in; `refusal` is raised once more than `budget` bytes came (chunked
    uploads declare no length)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > budget:
            raise refusal
        yield chunk


async def read_multipart(request: Request, max_file_bytes: int) -> FormData:
    """Parses a multipart body; file parts spool to temporary files (1 MB in memory, the rest on disk)."""
    budget, refusal = max_file_bytes + FORM_OVERHEAD_BYTES, upload_too_large(max_file_bytes)
    refuse_declared_oversize(request, budget, refusal)
    try:
        async with aclosing(counted_body(request, budget, refusal)) as body:
            parser = MultiPartParser(request.headers, body, max_files=1, max_fields=16, max_part_size=16 << 10)
            return await parser.parse()
    except MultiPartException as error:
        raise InvalidRequest(f"the multipart body cannot be read: {error.message}", code=BAD_REQUEST,
                             http_status=400) from error


async def read_json(request: Request) -> Any:
    refusal = PayloadTooLarge(f"a JSON submission is limited to {MAX_JSON_BYTES >> 10} KB")
    refuse_declared_oversize(request, MAX_JSON_BYTES, refusal)
    body = b"".join([chunk async for chunk in counted_body(request, MAX_JSON_BYTES, refusal)])
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser's stack
        raise InvalidRequest(f"the body is not valid JSON: {error}", code=BAD_REQUEST,
                             http_status=400) from error
