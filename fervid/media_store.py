"""Where uploaded media lives: a local folder (file:///dir) or any S3-compatible store (s3://bucket/prefix)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast
from urllib.parse import unquote, urlparse

from filelock import FileLock

from fervid.errors import (
    MEDIA_TOO_LARGE,
    SOURCE_NOT_ALLOWED,
    SOURCE_UNAVAILABLE,
    DiskFull,
    MediaError,
    PayloadTooLarge,
    disk_full_cause,
)
from fervid.netpolicy import DeadlinePassed, NonPublicAddress, RefusedDestination, non_public_address, open_public
from fervid.settings import Settings
from fervid.sources import SourceFence, held_file
from fervid.stopping import Stopped, StopSignal

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# What a tenant reads when a source cannot be fetched: the far side's errno, banner or address would map the
# network the workers sit in, so those go to the worker's log only.
SOURCE_UNAVAILABLE_TEXT = ("the source could not be read (no answer, refused, or not a 2xx HTTP reply); check that "
                           "it is reachable from the workers and submit the job again")

RATE_GRACE_S = 30.0  # a source's minimum rate is checked from this long after the request on


@dataclass(frozen=True)
class DownloadLimits:
    """How much and how slowly a worker may fetch one remote source (FERVID_MAX_DOWNLOAD_MB, FERVID_DOWNLOAD_*)."""

    max_bytes: int
    allow_private: bool
    deadline_s: float
    min_bytes_per_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadLimits:
        return cls(settings.max_download_mb << 20, settings.allow_private_urls, settings.download_deadline_s,
                   settings.download_min_rate_kbps * 1024)


@dataclass(frozen=True)
class Downloads:
    """Where a machine keeps the remote sources it fetches (its download cache) and the limits of each fetch."""

    cache_dir: Path
    cache_bytes: int  # the cache's budget: least recently used downloads go first
    limits: DownloadLimits

    @classmethod
    def from_settings(cls, settings: Settings) -> Downloads:
        return cls(settings.download_cache_dir, settings.download_cache_mb << 20,
                   DownloadLimits.from_settings(settings))


class Storage(Protocol):
    def save(self, key: str, stream: BinaryIO, max_bytes: int) -> str:
        """Copies `stream` in chunks under `key`; returns the URI workers read. Over `max_bytes`: PayloadTooLarge."""
        ...

    def delete(self, key: str) -> None: ...

    def read(self, key: str, max_bytes: int) -> bytes | None:
        """The bytes stored under `key`, or None when there are none; more than `max_bytes`: PayloadTooLarge."""
        ...

    def delete_folder(self, folder: str) -> None:
        """Deletes every key under `folder/` (a job's id: its upload and what workers made from it)."""
        ...


def _write_whole(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a `.part` file beside `path`, renamed into place when it completes: readers never see half."""
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("wb") as target:
            write(target)
        partial.replace(path)
    except OSError as error:
        if disk_full_cause(error) is None:
            raise
        raise DiskFull(f"no room to write {path.name} in {path.parent} ({error.strerror})") from error
    finally:
        partial.unlink(missing_ok=True)


def _copy_limited(stream: BinaryIO, target: BinaryIO, max_bytes: int) -> int:
    written = 0
    while chunk := stream.read(CHUNK):
        written += len(chunk)
        if written > max_bytes:
            raise PayloadTooLarge(f"the upload exceeds the {max_bytes // (1 << 20)} MB limit (FERVID_MAX_UPLOAD_MB)")
        target.write(chunk)
    return written


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return path

    def save(self, key: str, stream: BinaryIO, max_bytes: int) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(path, lambda target: _copy_limited(stream, target, max_bytes))
        return path.as_uri()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        if path.parent != self.root.resolve():
            shutil.rmtree(path.parent, ignore_errors=True)

    def read(self, key: str, max_bytes: int) -> bytes | None:
        try:
            with self._path(key).open("rb") as stream:
                data = stream.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"{key} is over {max_bytes} bytes")
        return data

    def delete_folder(self, folder: str) -> None:
        shutil.rmtree(self._path(folder), ignore_errors=True)


class S3Storage:
    """Any S3-compatible store; endpoint and credentials come from the usual AWS_* variables."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3  # the s3 extra; only loaded when an s3:// storage is configured

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def save(self, key: str, stream: BinaryIO, max_bytes: int) -> str:
        with tempfile.TemporaryFile() as spool:  # counted on disk first, so an oversize upload never lands
            _copy_limited(stream, spool, max_bytes)
            spool.seek(0)
            self.client.upload_fileobj(spool, self.bucket, self._key(key))
        return f"s3://{self.bucket}/{self._key(key)}"

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def read(self, key: str, max_bytes: int) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        if answer["ContentLength"] > max_bytes:
            answer["Body"].close()
            raise PayloadTooLarge(f"{key} is over {max_bytes} bytes")
        return bytes(answer["Body"].read())

    def delete_folder(self, folder: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=self._key(folder).rstrip("/") + "/")
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})


def storage_from_url(url: str) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path)
    raise ValueError(f"FERVID_STORAGE_URL must be file:///dir or s3://bucket/prefix, not {url!r}")


def _copy_paced(response: http.client.HTTPResponse, target: BinaryIO, limits: DownloadLimits) -> None:
    """Copies an http(s) body, failing a source slower than `limits.min_bytes_per_s` (the deadline is
    open_public's): read1 returns what has arrived, so a dripping source is measured rather than waited on."""
    started = time.monotonic()
    written = 0
    while chunk := response.read1(CHUNK):
        written += len(chunk)
        if written > limits.max_bytes:
            raise PayloadTooLarge(f"the source exceeds the {limits.max_bytes >> 20} MB limit (FERVID_MAX_DOWNLOAD_MB)")
        target.write(chunk)
        elapsed = time.monotonic() - started
        if elapsed > RATE_GRACE_S and written < limits.min_bytes_per_s * elapsed:
            raise MediaError(SOURCE_UNAVAILABLE, f"the source sent {written >> 10} KiB in {elapsed:.0f} s, below "
                             f"the minimum of {limits.min_bytes_per_s / 1024:g} KiB/s (FERVID_DOWNLOAD_MIN_RATE_KBPS)")


def _download(uri: str, target: BinaryIO, limits: DownloadLimits, stop: StopSignal) -> None:
    parsed = urlparse(uri)
    try:
        if parsed.scheme == "s3":
            import boto3

            boto3.client("s3").download_fileobj(parsed.netloc, parsed.path.lstrip("/"), target)
        elif parsed.scheme in ("http", "https"):
            if (address := non_public_address(uri, limits.allow_private)) is not None:
                raise NonPublicAddress(parsed.hostname or "", address)
            with open_public(uri, timeout=30, allow_private=limits.allow_private,
                             deadline_s=limits.deadline_s, stop=stop) as response:
                _copy_paced(response, target, limits)
        else:
            raise MediaError(SOURCE_UNAVAILABLE, f"unsupported source URI scheme {parsed.scheme!r}; "
                             "use file://, s3:// or http(s)://")
    except PayloadTooLarge as error:
        raise MediaError(MEDIA_TOO_LARGE, error.message) from error
    except RefusedDestination as error:  # a private address (maybe after a redirect or rebinding), or not http(s)
        log.warning("source %s refused: %r (%s)", uri, error, getattr(error, "address", ""))
        raise MediaError(SOURCE_NOT_ALLOWED, str(error)) from error
    except (MediaError, Stopped):
        raise
    except DeadlinePassed as error:  # names no address: the deadline is the tenant's to know
        raise MediaError(SOURCE_UNAVAILABLE, f"the source did not arrive within {limits.deadline_s:g} s "
                         "(FERVID_DOWNLOAD_DEADLINE_S); serve it faster or closer to the workers") from error
    except Exception as error:  # network and S3 failures all mean the same thing to the user
        if (full := disk_full_cause(error)) is not None:
            raise DiskFull(f"no room to keep the media on this machine ({full.strerror}); retried later") from error
        log.warning("source %s could not be read: %r", uri, error)
        raise MediaError(SOURCE_UNAVAILABLE, SOURCE_UNAVAILABLE_TEXT) from error


def _prune_downloads(directory: Path, max_bytes: int, keep: Path) -> None:
    """Drops the least recently used downloads until the cache fits its budget."""
    entries = sorted((p for p in directory.iterdir() if p.suffix not in (".lock", ".part") and p != keep),
                     key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in entries) + (keep.stat().st_size if keep.exists() else 0)
    for entry in entries:
        if total <= max_bytes:
            return
        total -= entry.stat().st_size
        entry.unlink(missing_ok=True)


def cached_download_prefix(cache_key: str) -> str:
    # The job id leads the name, so a sweep can tell which job each cached copy belongs to.
    return f"{cache_key}."


def cached_download_owners(directory: Path) -> dict[str, list[Path]]:
    """The download cache's files (locks and partial downloads too) by the job id their names start with."""
    owners: dict[str, list[Path]] = {}
    for path in directory.iterdir() if directory.is_dir() else ():
        owner, sep, _ = path.name.partition(".")
        if sep:
            owners.setdefault(owner, []).append(path)
    return owners


def is_remote(uri: str) -> bool:
    """A source `local_copy` downloads (http(s)://, s3://), not a file it opens."""
    return urlparse(uri).scheme not in ("", "file")


def cached_download(uri: str, cache_dir: Path, cache_key: str) -> Path | None:
    """This machine's cached download of the remote source `uri` (`local_copy` with `cache_key`), if it has one."""
    target = cache_dir / _cached_name(uri, cache_key)
    return target if target.is_file() else None


def _cached_name(uri: str, cache_key: str) -> str:
    suffix = Path(urlparse(uri).path).suffix[:16]
    return cached_download_prefix(cache_key) + hashlib.sha256(f"{cache_key}\n{uri}".encode()).hexdigest()[:32] + suffix


@contextmanager
def local_copy(uri: str, downloads: Downloads, cache_key: str | None = None, *,
               fence: SourceFence | None, stop: StopSignal | None = None) -> Iterator[Path]:
    """A local path for any source URI a worker can read: file://, a bare path, s3://, http(s)://.

    Remote sources are downloaded; with a `cache_key` (the job id) the download is kept in this machine's
    download cache, so the segments of one job that land on one worker fetch the media once. A source a tenant
    named comes with its tenant's `fence` (`Settings.job_source_fence`): a file is read only through `held_file`, an
    s3:// key only inside the tenant's prefixes. None: the upload store's own URIs, and the operator's CLI. A
    download ends with Stopped within moments of `stop` being set.
    """
    stop = stop or StopSignal()
    parsed = urlparse(uri)
    if fence is not None and parsed.scheme in ("", "file"):
        with held_file(uri, fence) as path:
            yield path
        return
    if fence is not None:
        fence.check(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
        if not path.is_file():
            raise MediaError(SOURCE_UNAVAILABLE, f"the source {uri} does not exist or is not a file")
        yield path
        return
    suffix = Path(parsed.path).suffix[:16]
    limits = downloads.limits
    if cache_key is None:
        with tempfile.NamedTemporaryFile(suffix=suffix) as spool:
            _download(uri, cast(BinaryIO, spool), limits, stop)
            spool.flush()
            yield Path(spool.name)
        return
    directory = downloads.cache_dir
    directory.mkdir(parents=True, exist_ok=True)
    name = _cached_name(uri, cache_key)
    target = directory / name
    with FileLock(str(directory / f"{name}.lock")):  # workers on one machine download a job's media once
        if not target.exists():
            _write_whole(target, lambda stream: _download(uri, stream, limits, stop))
        os.utime(target)  # recently used: pruned last
    _prune_downloads(directory, downloads.cache_bytes, keep=target)
    yield target
