"""The Python client of a fervid service (`from fervid.client import Client`): submit media, wait for jobs, read
their results. The standard library only: it comes with the base install, no ML runtime, no HTTP package.

    client = Client("http://localhost:8000")            # the key from FERVID_API_KEY
    job = client.submit("clip.mp4", sample_fps=5)       # a local file (streamed up), or a URI the workers can read
    job = client.wait(job)
    for frame in client.timeline(job):                  # every page, one frame at a time
        ...

Answers 429 and 5xx (and a connection that drops) are retried after the server's Retry-After, a few times; an
upload is retried only when it carries a `client_request_token`, which makes it idempotent. Errors the server
answers come back as ApiError with its code.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

KEY_VARIABLE = "FERVID_API_KEY"
FINISHED = ("succeeded", "failed", "cancelled")
UPLOAD_CHUNK = 1 << 20
PAGE_SIZE = 1000
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    """An answer that is not a success: its HTTP status and the service's error code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


@dataclass(frozen=True)
class Job:
    job_id: str
    status: str  # queued | preparing | running | succeeded | failed | cancelled
    frames_done: int
    frames_total: int | None
    error_code: str | None
    error_message: str | None
    filename: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)  # the whole answer (media, model, warnings, times)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        error = body.get("error") or {}
        progress = body.get("progress") or {}
        return cls(job_id=body["job_id"], status=body["status"], frames_done=int(progress.get("frames_done", 0)),
                   frames_total=progress.get("frames_total"), error_code=error.get("code"),
                   error_message=error.get("message"), filename=body.get("filename"), raw=body)


JobRef = Job | str
# Called as an upload goes: (bytes sent, bytes in all).
UploadProgress = Callable[[int, int], None]


class Client:
    def __init__(self, url: str, key: str | None = None, *, timeout_s: float = 60.0, attempts: int = 6,
                 longest_wait_s: float = 60.0) -> None:
        key = key if key is not None else os.environ.get(KEY_VARIABLE, "")
        if not key:
            raise ValueError(f"no API key: pass key= or set {KEY_VARIABLE}")
        self.base = url.rstrip("/")
        self.key, self.timeout_s, self.attempts, self.longest_wait_s = key, timeout_s, attempts, longest_wait_s

    def submit(self, source: str | Path, *, sample_fps: float = 5.0, max_duration_s: float | None = None,
               webhook_url: str | None = None, client_request_token: str | None = None,
               on_upload: UploadProgress | None = None) -> Job:
        """A job for a local file (a Path, or a str naming an existing file: uploaded) or a URI the workers read."""
        options = {"sample_fps": sample_fps, "max_duration_s": max_duration_s, "webhook_url": webhook_url,
                   "client_request_token": client_request_token}
        fields = {name: value for name, value in options.items() if value is not None}
        path = Path(source)
        if isinstance(source, Path) or path.is_file():
            return Job.from_json(self._upload(path, fields, on_upload, retry=client_request_token is not None))
        body = json.dumps({"source_uri": str(source), **fields}).encode()
        return Job.from_json(self._json("POST", "/v1/jobs", body, "application/json",
                                        retry=client_request_token is not None))

    def job(self, job: JobRef) -> Job:
        return Job.from_json(self._json("GET", f"/v1/jobs/{_job_id(job)}"))

    def wait(self, job: JobRef, *, poll_s: float = 1.0, timeout_s: float | None = None,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """The job once it finished (succeeded, failed or cancelled); TimeoutError past `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            current = self.job(job)
            if on_progress is not None:
                on_progress(current)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {current.job_id} is still {current.status} after {timeout_s:g} s")
            time.sleep(poll_s)

    def timeline(self, job: JobRef, *, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Every analysed frame ({frame_index, timestamp_ms, faces}), in order, across all pages."""
        cursor: str | None = None
        while True:
            query = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", f"/v1/jobs/{_job_id(job)}/timeline?{urllib.parse.urlencode(query)}")
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def summary(self, job: JobRef) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/jobs/{_job_id(job)}/summary")
        return result

    def csv(self, job: JobRef) -> bytes:
        """The timeline as CSV, one row per face."""
        return self._request("GET", f"/v1/jobs/{_job_id(job)}/timeline.csv")[1]

    def annotated_video(self, job: JobRef, target: str | Path, *, timeout_s: float | None = None) -> Path:
        """Writes the job's annotated video (its frames with each face's box and emotions drawn on) to `target`, once
        a worker has rendered it: the first call asks for it. TimeoutError past `timeout_s`."""
        target = Path(target)
        partial = target.with_name(f"{target.name}.part")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with partial.open("wb") as sink:
                status, body = self._request("GET", f"/v1/jobs/{_job_id(job)}/annotated.mp4", sink=sink)
            if status == 200:
                return partial.replace(target)
            partial.unlink()
            rendering = json.loads(body)  # 202: a worker renders it
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the annotated video of job {_job_id(job)} is still rendering after "
                                   f"{timeout_s:g} s ({rendering['frames_done']} of "
                                   f"{rendering['frames_total'] or '?'} frames)")
            time.sleep(min(float(rendering.get("retry_after_s", 2)), self.longest_wait_s))

    def cancel(self, job: JobRef) -> Job:
        return Job.from_json(self._json("POST", f"/v1/jobs/{_job_id(job)}/cancel"))

    def delete(self, job: JobRef) -> None:
        self._request("DELETE", f"/v1/jobs/{_job_id(job)}")

    # --- HTTP ------------------------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, *,
              retry: bool = True) -> Any:
        return json.loads(self._request(method, path, body, content_type, retry=retry)[1])

    def _upload(self, path: Path, fields: dict[str, Any], on_upload: UploadProgress | None, retry: bool) -> Any:
        boundary = uuid.uuid4().hex
        head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                        for name, value in fields.items())
        quoted = path.name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = path.stat().st_size

        def body() -> Iterable[bytes]:
            with path.open("rb") as stream:
                yield head
                yield from _chunks(stream, size, on_upload)
                yield tail

        return json.loads(self._request("POST", "/v1/jobs", body, f"multipart/form-data; boundary={boundary}",
                                        length=len(head) + size + len(tail), retry=retry)[1])

    def _request(self, method: str, path: str, body: bytes | Callable[[], Iterable[bytes]] | None = None,
                 content_type: str | None = None, *, length: int | None = None,
                 retry: bool = True, sink: BinaryIO | None = None) -> tuple[int, bytes]:
        """(status, body) of a success; ApiError otherwise, after retrying what may pass (429, 5xx, a dropped
        connection) when `retry`. With a `sink`, a 200's body is written there instead (and b"" returned)."""
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if length is not None:
            headers["Content-Length"] = str(length)
        for attempt in range(1, self.attempts + 1):
            data = body() if callable(body) else body
            request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)  # type: ignore[arg-type]
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    if sink is None or answer.status != 200:
                        return answer.status, answer.read()
                    sink.seek(0)
                    sink.truncate()  # what an attempt cut short wrote
                    shutil.copyfileobj(answer, sink, 1 << 20)
                    return answer.status, b""
            except urllib.error.HTTPError as answer:
                error = _api_error(answer)
                if not retry or error.status not in RETRY_STATUSES or attempt == self.attempts:
                    raise error from None
                wait_s = error.retry_after_s if error.retry_after_s is not None else 2.0 ** attempt
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as failure:
                if not retry or attempt == self.attempts:
                    raise ApiError(0, "unreachable", f"{self.base} did not answer ({failure})") from failure
                wait_s = 2.0 ** attempt
            time.sleep(min(wait_s, self.longest_wait_s))
        raise AssertionError("unreachable: the last attempt returns or raises")


def _job_id(job: JobRef) -> str:
    return job.job_id if isinstance(job, Job) else job


def _chunks(stream: BinaryIO, size: int, on_upload: UploadProgress | None) -> Iterator[bytes]:
    sent = 0
    while chunk := stream.read(UPLOAD_CHUNK):
        sent += len(chunk)
        yield chunk
        if on_upload is not None:
            on_upload(sent, size)


def _api_error(answer: urllib.error.HTTPError) -> ApiError:
    raw = answer.read()
    retry_after = answer.headers.get("Retry-After", "")
    retry_after_s = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
    try:
        error = json.loads(raw)["error"]
        return ApiError(answer.code, str(error["code"]), str(error["message"]), retry_after_s)
    except (ValueError, KeyError, TypeError):
        return ApiError(answer.code, "http_error", raw[:200].decode(errors="replace") or answer.reason,
                        retry_after_s)
