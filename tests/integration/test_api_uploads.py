"""The upload byte budget, on Starlette's real request and multipart parser fed one chunk at a time (an ASGI
server delivers bodies this way; the TestClient delivers a body whole, so it cannot show when reading stops)."""

from __future__ import annotations

import anyio
import pytest
from starlette.requests import Request

from api.uploads import FORM_OVERHEAD_BYTES, read_multipart
from fervid.errors import PayloadTooLarge

CHUNK = 64 << 10
LIMIT = 1 << 20


class ChunkedBody:
    """An ASGI receive callable: a multipart file part header, then `chunks` chunks of file data."""

    def __init__(self, chunks: int) -> None:
        self.chunks, self.delivered = chunks, 0

    async def __call__(self) -> dict[str, object]:
        self.delivered += 1
        if self.delivered == 1:
            head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
            return {"type": "http.request", "body": head, "more_body": True}
        last = self.delivered > self.chunks + 1
        return {"type": "http.request", "body": b"\r\n--b--\r\n" if last else b"x" * CHUNK, "more_body": not last}


def multipart_request(receive: ChunkedBody, content_length: int | None = None) -> Request:
    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return Request({"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}, receive)


def test_a_body_without_length_stops_being_read_once_past_the_budget() -> None:
    # given a chunked body of 1000 chunks (62.5 MB) against a 1 MB limit
    body = ChunkedBody(chunks=1000)
    # when it is parsed
    with pytest.raises(PayloadTooLarge, match="FERVID_MAX_UPLOAD_MB"):
        anyio.run(read_multipart, multipart_request(body), LIMIT)
    # then reading stopped at the chunk that passed limit + form overhead (17 data chunks after the part header),
    # not at the end of the body
    assert body.delivered == 1 + (LIMIT + FORM_OVERHEAD_BYTES) // CHUNK


def test_a_declared_oversize_body_is_refused_before_a_byte_is_read() -> None:
    # given a Content-Length over the limit
    body = ChunkedBody(chunks=1000)
    # when / then
    with pytest.raises(PayloadTooLarge):
        anyio.run(read_multipart, multipart_request(body, content_length=1000 * CHUNK), LIMIT)
    assert body.delivered == 0


def test_a_body_within_the_budget_parses_whole() -> None:
    # given 8 chunks (512 KB) against a 1 MB limit
    body = ChunkedBody(chunks=8)
    # when
    form = anyio.run(read_multipart, multipart_request(body), LIMIT)
    # then the file part holds every byte
    upload = form["file"]
    assert not isinstance(upload, str) and upload.size == 8 * CHUNK
    anyio.run(form.close)
