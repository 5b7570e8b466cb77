"""YuNet's file: where a process finds it, and its download into the model cache (sha256-checked, bounded in time
and size, once however many processes start together). No ML runtime here: a worker's main process, which forks its
pool, fetches the file without loading anything that starts threads (worker/tasks.py)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import filelock

from fervid.errors import CHECKSUM_MISMATCH, DETECTOR_UNAVAILABLE, DOWNLOAD_FAILED, FervidError
from fervid.netpolicy import RefusedDestination, open_public
from fervid.settings import Settings

# Its own logger, so that commands that log only warnings (`fervid analyze`) still show a first-use download.
download_log = logging.getLogger(f"{__name__}.download")
PROGRESS_EVERY_S = 1.0

YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_MAX_BYTES = 4 << 20  # the file is 232,589 bytes: anything far larger is not YuNet
DOWNLOAD_DEADLINE_S = 60.0  # the whole download, not each read: a trickling server cannot hold a worker's start
DOWNLOAD_CHUNK = 64 << 10
READ_TIMEOUT_S = 10.0  # per socket operation; the deadline bounds their sum
WHAT_TO_DO = f"run `fervid models fetch` or set FERVID_DETECTOR_PATH to a copy of {YUNET_FILENAME}"


@dataclass(frozen=True)
class DetectorPlan:
    """Which detector a process would start, and why, decided from files and settings alone (no download)."""

    yunet_file: Path | None  # a YuNet file to load as it is
    download_url: str  # else, when not empty, where to fetch YuNet from into the cache first
    reason: str

    def describe(self) -> str:
        if self.yunet_file is not None:
            return f"yunet ({self.reason})"
        if self.download_url:
            return f"yunet after a first-use download ({self.reason}; haar if that download fails)"
        return f"haar ({self.reason}; {WHAT_TO_DO})"


def plan_detector(detector_path: Path | None, model_cache_dir: Path, detector_url: str) -> DetectorPlan:
    """FERVID_DETECTOR_PATH, else a fetched copy in the model cache, else a download from FERVID_DETECTOR_URL, else
    Haar. A configured path that does not exist is an error, not a fallback: someone meant a file."""
    if detector_path is not None:
        if not detector_path.is_file():
            raise FervidError(f"FERVID_DETECTOR_PATH {detector_path} does not exist", code=DETECTOR_UNAVAILABLE)
        return DetectorPlan(detector_path, "", f"FERVID_DETECTOR_PATH {detector_path}")
    cached = model_cache_dir / YUNET_FILENAME
    if cached.is_file():
        return DetectorPlan(cached, "", f"cached at {cached}")
    if detector_url:
        return DetectorPlan(None, detector_url, f"from {detector_url} into {model_cache_dir}")
    return DetectorPlan(None, "", f"no YuNet in {model_cache_dir} and FERVID_DETECTOR_URL is empty (no download)")


# One download attempt per process start: a worker's pool processes, forked after the parent tried, reuse its
# outcome instead of each retrying (and each outlasting Celery's wait for a pool process to come up).
_failed_downloads: dict[tuple[Path, str], str] = {}


def find_or_fetch_yunet(settings: Settings) -> tuple[Path | None, str]:
    """The YuNet file to load and why, downloading it into the model cache when the plan says so; (None, why not)
    when it cannot be had."""
    plan = plan_detector(settings.detector_path, settings.model_cache_dir, settings.detector_url)
    if plan.yunet_file is not None or not plan.download_url:
        return plan.yunet_file, plan.reason
    attempt = (settings.model_cache_dir, plan.download_url)
    if attempt in _failed_downloads:
        return None, _failed_downloads[attempt]
    try:
        download_log.info("downloading YuNet (first use) from %s into %s", plan.download_url,
                          settings.model_cache_dir)
        path = fetch_yunet(settings.model_cache_dir, plan.download_url, on_progress=DownloadProgress())
    except FervidError as error:
        _failed_downloads[attempt] = f"{error.code}: {error.message}"
        return None, _failed_downloads[attempt]
    return path, f"downloaded from {plan.download_url} to {path}"


class DownloadProgress:
    """A download's progress lines: the first piece, then at most one every PROGRESS_EVERY_S, and the last."""

    def __init__(self) -> None:
        self.last_line = -math.inf

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if done == total or now - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = now
            download_log.info("downloading YuNet: %d / %s bytes", done, total if total is not None else "?")


def fetch_yunet(target_dir: Path, url: str, on_progress: Callable[[int, int | None], None] | None = None, *,
                deadline_s: float = DOWNLOAD_DEADLINE_S, max_bytes: int = YUNET_MAX_BYTES) -> Path:
    """Downloads YuNet into target_dir, refusing a file whose sha256 differs from the published one.

    Processes starting together take turns on a file lock, so one downloads and the others find its file;
    the file appears whole or not at all. `on_progress(bytes so far, total or None)` follows the download.
    """
    target = target_dir / YUNET_FILENAME
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        # The lock waits out another process's download, which is itself bounded by the deadline.
        with filelock.FileLock(target_dir / f"{YUNET_FILENAME}.lock", timeout=deadline_s + READ_TIMEOUT_S):
            if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == YUNET_SHA256:
                return target
            payload = _download(url, target_dir, on_progress, deadline_s, max_bytes)
            digest = hashlib.sha256(payload).hexdigest()
            if digest != YUNET_SHA256:
                raise FervidError(f"the file at {url} has sha256 {digest}, not YuNet's {YUNET_SHA256}; not installed",
                                  code=CHECKSUM_MISMATCH)
            with tempfile.NamedTemporaryFile(dir=target_dir, prefix=f".{YUNET_FILENAME}.", delete=False) as partial:
                partial.write(payload)
            os.replace(partial.name, target)
    except OSError as error:  # an unwritable cache, or a lock held past the deadline
        raise FervidError(f"could not install YuNet in {target_dir}: {error}. Set FERVID_MODEL_CACHE_DIR to a "
                          "writable folder or FERVID_DETECTOR_PATH to a copy", code=DOWNLOAD_FAILED) from error
    return target


def _download(url: str, target_dir: Path, on_progress: Callable[[int, int | None], None] | None, deadline_s: float,
              max_bytes: int) -> bytes:
    def failed(why: str) -> FervidError:
        return FervidError(f"could not download {url}: {why}. Copy {YUNET_FILENAME} into {target_dir} or set "
                           "FERVID_DETECTOR_PATH", code=DOWNLOAD_FAILED)

    deadline = time.monotonic() + deadline_s
    chunks: list[bytes] = []
    done = 0
    try:
        # The operator's URL (https, an internal mirror, a test's loopback server): private addresses allowed,
        # but http(s) only, redirects included.
        with open_public(url, timeout=min(READ_TIMEOUT_S, deadline_s), allow_private=True) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise failed(f"it is {total} bytes, more than the {max_bytes} a YuNet file can be")
            while chunk := response.read1(DOWNLOAD_CHUNK):  # what has arrived, so a trickle meets the deadline
                done += len(chunk)
                if done > max_bytes:
                    raise failed(f"it is more than the {max_bytes} bytes a YuNet file can be")
                if time.monotonic() > deadline:
                    raise failed(f"it took more than {deadline_s:g} s")
                chunks.append(chunk)
                if on_progress is not None:
                    on_progress(done, total)
    except (OSError, RefusedDestination) as error:
        raise failed(str(error)) from error
    return b"".join(chunks)
