"""`fervid submit PATH...`: submit files and folders of media to a running service, optionally wait for the jobs and
write their results. Built on fervid.client; the key comes from FERVID_API_KEY, never from a flag (shell history).

Each file's `client_request_token` is derived from its content and options, so running the same command again
after an interruption submits nothing twice: the service answers with the job it already has.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fervid.client import ApiError, Client, Job
from fervid.upload_check import HEAD_BYTES, not_media_reason

# Media types the name alone may not tell (mimetypes knows mp4, mov, avi, webm, jpg, png, gif, ...).
EXTRA_MEDIA_SUFFIXES = frozenset({".mkv", ".ts", ".mts", ".m2ts", ".heic", ".heif", ".avif", ".webp", ".3gp", ".flv",
                                  ".wmv", ".mpg", ".mpeg", ".m4v", ".y4m", ".tif", ".tiff", ".bmp"})
BAR_WIDTH = 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="media files, or folders to walk")
    parser.add_argument("--api", required=True, help="the service's base URL, e.g. http://localhost:8000")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second of video")
    parser.add_argument("--max-duration", type=float, default=None,
                        help="the longest any of the media runs, in seconds: what each job reserves of your "
                             "frames per day until it is prepared")
    parser.add_argument("--wait", action="store_true", help="wait for every job and write its results to --out")
    parser.add_argument("--out", type=Path, default=Path("fervid-results"), help="where --wait writes results")
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="the timeline's format")


@dataclass
class Submission:
    path: Path
    job: Job | None = None
    failure: str | None = None  # why it has no job, or why its job did not succeed


def media_files(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The media files among `paths` (folders walked, in name order), and the others with why they are skipped."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            if not candidate.is_file():
                skipped.append((candidate, "not a file"))
                continue
            reason = _not_media(candidate)
            if reason is None:
                found.append(candidate)
            else:
                skipped.append((candidate, reason))
    return found, skipped


def _not_media(path: Path) -> str | None:
    guessed = mimetypes.guess_type(path.name)[0] or ""
    if not (guessed.startswith(("video/", "image/")) or path.suffix.lower() in EXTRA_MEDIA_SUFFIXES):
        return f"not a video or image by its name ({guessed or 'unknown type'})"
    if path.stat().st_size == 0:
        return "empty"
    with path.open("rb") as stream:
        what = not_media_reason(stream.read(HEAD_BYTES))
    return None if what is None else f"{what}, not a video or an image"


def request_token(path: Path, fps: float, max_duration_s: float | None) -> str:
    """The same file with the same options gives the same token, whatever its name or folder."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return f"submit:{digest.hexdigest()}:{fps:g}:{max_duration_s or ''}"[:128]


class Progress:
    """One bar per file on a terminal (redrawn in place), else one line per file and state change."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.live = out, out.isatty()
        self.last: dict[str, str] = {}

    def show(self, name: str, state: str, done: int | None = None, total: int | None = None) -> None:
        if self.live:
            bar = ""
            if done is not None and total:
                filled = BAR_WIDTH * min(done, total) // total
                bar = f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}"
            self.out.write(f"\r\x1b[2K{name}: {state}{bar}")
            self.out.flush()
        elif self.last.get(name) != state:
            self.out.write(f"{name}: {state}\n")
            self.out.flush()
        self.last[name] = state

    def end(self, name: str, state: str) -> None:
        if self.live:
            self.out.write(f"\r\x1b[2K{name}: {state}\n")
        else:
            self.out.write(f"{name}: {state}\n")
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    client = Client(args.api)
    files, skipped = media_files(args.paths)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    progress = Progress(sys.stderr)
    submissions = [_submit(client, path, args, progress) for path in files]
    if args.wait:
        args.out.mkdir(parents=True, exist_ok=True)
        for submission in submissions:
            if submission.job is not None:
                _wait_and_write(client, submission, args, progress)
    failed = [submission for submission in submissions if submission.failure is not None]
    for submission in failed:
        print(f"failed {submission.path}: {submission.failure}", file=sys.stderr)
    if not files:
        print("no media among the paths given", file=sys.stderr)
    return 1 if failed or not files else 0


def _submit(client: Client, path: Path, args: argparse.Namespace, progress: Progress) -> Submission:
    submission = Submission(path)
    name = str(path)
    try:
        token = request_token(path, args.fps, args.max_duration)
        submission.job = client.submit(
            path, sample_fps=args.fps, max_duration_s=args.max_duration, client_request_token=token,
            on_upload=lambda sent, size: progress.show(name, "uploading", sent >> 10, max(size >> 10, 1)))
        progress.end(name, f"job {submission.job.job_id} ({submission.job.status})")
    except (ApiError, OSError) as error:
        submission.failure = str(error)
        progress.end(name, f"not submitted: {error}")
    return submission


def _wait_and_write(client: Client, submission: Submission, args: argparse.Namespace, progress: Progress) -> None:
    assert submission.job is not None
    name = str(submission.path)
    try:
        job = client.wait(submission.job, on_progress=lambda job: progress.show(
            name, job.status, job.frames_done, job.frames_total))
        submission.job = job
        if job.status != "succeeded":
            submission.failure = f"{job.status}: {job.error_code or ''} {job.error_message or ''}".strip()
            progress.end(name, submission.failure)
            return
        stem = args.out / _result_stem(submission.path, args.paths)
        stem.parent.mkdir(parents=True, exist_ok=True)
        if args.format == "csv":
            stem.with_name(stem.name + ".timeline.csv").write_bytes(client.csv(job))
        else:
            frames = list(client.timeline(job))
            stem.with_name(stem.name + ".timeline.json").write_text(json.dumps(frames))
        stem.with_name(stem.name + ".summary.json").write_text(json.dumps(client.summary(job), indent=1))
        progress.end(name, f"succeeded: {job.frames_done} frames -> {stem}.*")
    except (ApiError, OSError, TimeoutError) as error:
        submission.failure = str(error)
        progress.end(name, f"failed: {error}")


def _result_stem(path: Path, roots: list[Path]) -> Path:
    """Results are named after the file, under its path within the folder it was found in (two clips of one name
    in different folders do not overwrite each other)."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root)
    return Path(path.name)

