"""Where a tenant's file:// and s3:// sources may lie, and reading a file source so that what is checked is read.

FERVID_FILE_URI_ROOTS and FERVID_S3_SOURCE_PREFIXES are comma-separated locations. `{tenant}`, as a whole path
segment of an entry (`/mnt/media/{tenant}`, `s3://media/{tenant}`), stands for the tenant whose job names the
source, so each tenant reaches its own folder only; an entry without it is open to every tenant, as written.

The API checks a source's URI as written (no file system access: it must not tell which paths exist, and it may not
see the workers' mounts). Whoever reads the file checks again where it is read, holding the one descriptor that was
checked until the read is done (`held_file`), so a name swapped for a symlink in between reads nothing.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

from fervid.errors import SOURCE_NOT_ALLOWED, MediaError

log = logging.getLogger(__name__)

TENANT_PLACEHOLDER = "{tenant}"
# Tenant names go into paths and S3 keys: no separator, no dot segment, nothing a shell or URI would read apart.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# One answer for a source that is outside the tenant's locations, missing, or not a regular file: a tenant must not
# learn which paths exist beyond its own.
SOURCE_REFUSED_TEXT = ("the source is not one your tenant may read: it lies outside the locations opened to your "
                       "tenant (FERVID_FILE_URI_ROOTS, FERVID_S3_SOURCE_PREFIXES), or it is not there, or not a "
                       "regular file; check the URI against the locations your operator gave you, or upload the file")
FENCED_SCHEMES = ("", "file", "s3")
# Opened without following a final symlink, without blocking on a FIFO, never as a controlling terminal.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def source_refused() -> MediaError:
    return MediaError(SOURCE_NOT_ALLOWED, SOURCE_REFUSED_TEXT)


def is_safe_tenant(tenant: str) -> bool:
    return TENANT_NAME.fullmatch(tenant) is not None


class Location(NamedTuple):
    """A place as path segments: file:// (bucket "") or s3://bucket."""

    scheme: str
    bucket: str
    parts: tuple[str, ...]

    def holds(self, other: Location) -> bool:
        return (other.scheme, other.bucket) == (self.scheme, self.bucket) and \
            other.parts[:len(self.parts)] == self.parts


def _file_parts(path: str) -> tuple[str, ...]:
    # Empty segments are what the kernel makes of them: nothing ("//" is "/").
    return tuple(part for part in path.split("/") if part)


def _s3_parts(path: str) -> tuple[str, ...]:
    # As the download reads it: leading slashes dropped, every other segment a literal part of the key.
    key = path.lstrip("/")
    return tuple(key.split("/")) if key else ()


def _location(uri: str) -> Location | None:
    """`uri` as a Location, or None where it is not a plain one: another scheme, a host in a file URI, a NUL, a
    relative path, or a `.` or `..` segment (a source never needs one, and none is resolved here)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        path = unquote(parsed.path) if scheme else uri
        if parsed.netloc not in ("", "localhost") or not path.startswith("/") or "\x00" in path:
            return None
        location = Location("file", "", _file_parts(path))
    elif scheme == "s3":
        if not parsed.netloc or "\x00" in uri:
            return None
        location = Location("s3", parsed.netloc, _s3_parts(parsed.path))
    else:
        return None
    if any(part in (".", "..") for part in location.parts):
        return None
    return location


def parse_locations(entries: str, setting: str, scheme: str) -> tuple[str, ...]:
    """The comma-separated entries of `setting`, each checked to be a plain `scheme` location whose `{tenant}`,
    if any, is a whole segment; a malformed entry is a ValueError (the service does not start)."""
    checked = []
    for entry in filter(None, (part.strip() for part in entries.split(","))):
        probe = _location(entry.replace(TENANT_PLACEHOLDER, "tenant"))
        parsed = urlparse(entry)
        segments = [parsed.netloc, *_s3_parts(parsed.path)] if scheme == "s3" else _file_parts(entry)
        if probe is None or probe.scheme != scheme or any(
                TENANT_PLACEHOLDER in segment and segment != TENANT_PLACEHOLDER for segment in segments):
            example = "/mnt/media/{tenant}" if scheme == "file" else "s3://bucket/{tenant}"
            raise ValueError(f"{setting} entry {entry!r} is not a plain {scheme} location (e.g. {example}; "
                             "`{tenant}` only as a whole segment, no `.` or `..`)")
        checked.append(entry)
    return tuple(checked)


def _real(parts: tuple[str, ...]) -> tuple[str, ...]:
    return _file_parts(os.path.realpath("/" + "/".join(parts)))


@dataclass(frozen=True)
class SourceFence:
    """The locations one tenant's sources may lie in, less the upload store (which holds every tenant's uploads)."""

    roots: tuple[Location, ...]
    store: Location | None

    @classmethod
    def for_tenant(cls, tenant: str, file_roots: str, s3_prefixes: str, storage_url: str) -> SourceFence:
        """The tenant's locations; an unsafe tenant name (never from FERVID_API_KEYS, which refuses them) gets none."""
        entries = [*parse_locations(file_roots, "FERVID_FILE_URI_ROOTS", "file"),
                   *parse_locations(s3_prefixes, "FERVID_S3_SOURCE_PREFIXES", "s3")]
        if not is_safe_tenant(tenant):
            entries = []
        roots = tuple(location for entry in entries
                      if (location := _location(entry.replace(TENANT_PLACEHOLDER, tenant))) is not None)
        return cls(roots, _location(storage_url))

    def admits(self, uri: str) -> bool:
        """Whether the tenant may name `uri`, read as written. http(s) sources are fenced where they are fetched
        (public addresses only), so they pass here."""
        if urlparse(uri).scheme.lower() not in FENCED_SCHEMES:
            return True
        target = _location(uri)
        return target is not None and self._holds(target, self.roots, self.store)

    def holds_real_path(self, path: str) -> bool:
        """Whether the resolved `path` lies in one of the tenant's folders as the file system resolves them."""
        target = Location("file", "", _file_parts(path))
        roots = tuple(Location("file", "", _real(root.parts)) for root in self.roots if root.scheme == "file")
        store = Location("file", "", _real(self.store.parts)) if self.store and self.store.scheme == "file" else None
        return self._holds(target, roots, store)

    @staticmethod
    def _holds(target: Location, roots: tuple[Location, ...], store: Location | None) -> bool:
        return any(root.holds(target) for root in roots) and not (store is not None and store.holds(target))

    def check(self, uri: str) -> None:
        if not self.admits(uri):
            raise source_refused()


@contextmanager
def held_file(uri: str, fence: SourceFence) -> Iterator[Path]:
    """A path to the file `uri` names that reads the very file checked to lie in the fence, for as long as the
    block runs: `/proc/<this process>/fd/N` of one descriptor, opened without following a final symlink, checked to
    be a regular file whose opened path is in the fence. Readers that need a path (FFmpeg, Pillow), here or in a
    decoder process of this user (worker/media/isolated.py), open that, which reopens the same file whatever has
    happened to its name since. Any refusal is `source_refused()`."""
    if not fence.admits(uri):
        raise source_refused()
    parsed = urlparse(uri)
    real = os.path.realpath(unquote(parsed.path) if parsed.scheme else uri)
    if not fence.holds_real_path(real):  # a symlink out of the folder, as it stands now
        raise source_refused()
    try:
        descriptor = os.open(real, OPEN_FLAGS)
    except OSError as error:  # missing, unreadable, or swapped for a symlink since the line above
        log.info("source %s not opened: %r", uri, error)
        raise source_refused() from error
    try:
        # By this process's id, not /proc/self: the decoder processes that read it are other processes.
        held = Path(f"/proc/{os.getpid()}/fd/{descriptor}")
        # Where the descriptor really points: a directory swapped for a symlink above it shows here.
        if not stat.S_ISREG(os.fstat(descriptor).st_mode) or not fence.holds_real_path(os.readlink(held)):
            raise source_refused()
        yield held
    finally:
        os.close(descriptor)
