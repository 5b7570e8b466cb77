"""`fervid analyze` and `fervid demo`: the same pipeline in process, on the embedded default database, no broker."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TextIO

import av
import cv2
import numpy as np
from tqdm import tqdm

from fervid import results
from fervid.db import session_scope
from fervid.errors import DEMO_MEDIA_MISSING, JOB_FAILED, FervidError, InvalidRequest
from fervid.jobs import job_to_dict
from fervid.labels import EMOTIONS
from fervid.lifecycle import JobStatus
from fervid.migrate import upgrade
from fervid.settings import Settings, get_settings
from fervid.tables import Job
from fervid.utc import utc_now
from worker import pipeline, runner
from worker.annotate import write_annotated
from worker.layout import usable_cores, with_thread_share
from worker.media.limits import MediaLimits

LOCAL_TENANT = "local"


def analyze_file(path: Path, sample_fps: float, settings: Settings, show_progress: bool = True) -> str:
    """Runs one file through the whole pipeline in this process; returns the job id (succeeded or failed)."""
    if not (sample_fps > 0 and math.isfinite(sample_fps)):  # nan and inf too: `float` parses both
        raise InvalidRequest(f"--fps must be a number > 0, not {sample_fps}")
    if not path.is_file():
        raise InvalidRequest(f"{path} does not exist or is not a file")
    upgrade(settings.database_url)  # the embedded database creates itself on first use
    settings = with_thread_share(settings, usable_cores())  # as a one-process worker's
    analyzer = pipeline.build_analyzer(settings)
    job_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(Job(id=job_id, tenant=LOCAL_TENANT, queue=settings.queue, status=JobStatus.queued,
                        source_uri=path.resolve().as_uri(), filename=path.name, sample_fps=sample_fps, warnings=[],
                        created_at=utc_now()))
    # The operator named the file: no tenant's locations apply.
    token = uuid.uuid4().hex  # this process's claim on the job's work
    indices = runner.prepare(job_id, token, analyzer.model_info, settings, operator_source=True)
    job = runner.load_job(job_id)
    assert job is not None
    with tqdm(total=job.frames_total or 0, unit="frame", desc=path.name, file=sys.stderr,
              disable=not show_progress or not indices) as bar:
        for index in indices:
            segment_start = bar.n

            def advance(done: int, start: int = segment_start) -> None:
                bar.update(start + done - bar.n)

            runner.run_segment(job_id, index, token, analyzer, settings, on_frames=advance, operator_source=True)
    return job_id


def job_failure(job_id: str) -> FervidError | None:
    job = runner.load_job(job_id)
    if job is None or job.status == JobStatus.succeeded:
        return None
    return FervidError(job.error_message or f"the job ended {job.status}", code=job.error_code or JOB_FAILED)


def write_output(job_id: str, fmt: str, stream: TextIO) -> None:
    if fmt == "csv":
        for line in results.timeline_csv_lines(job_id):
            stream.write(line)
        return
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        payload = {"job": job_to_dict(session, job), "summary": results.summary(session, job_id),
                   "timeline": results.full_timeline(session, job_id)}
    json.dump(payload, stream, indent=1)
    stream.write("\n")


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a video or image file")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second (default 5)")
    parser.add_argument("--format", choices=("json", "csv"), default="json")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    parser.add_argument("--annotate", type=Path, default=None, metavar="OUT.mp4",
                        help="also write the video with each face's box, track id and emotions drawn on it")
    parser.add_argument("--no-progress", action="store_true")


def run_analyze(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.annotate is not None and args.annotate.suffix.lower() != ".mp4":
        raise InvalidRequest(f"--annotate writes an MP4: name a file ending in .mp4, not {args.annotate}")
    job_id = analyze_file(args.path, args.fps, settings, show_progress=not args.no_progress)
    failure = job_failure(job_id)
    if failure is not None:
        raise failure
    if args.annotate is not None:
        frames = write_annotated(args.path, args.annotate, job_id, MediaLimits.from_settings(settings),
                                 settings.decode_memory_mb, threads=usable_cores())
        print(f"wrote {args.annotate} ({frames} frames)", file=sys.stderr)
    if args.out is None:
        write_output(job_id, args.format, sys.stdout)
    else:
        with args.out.open("w", newline="") as stream:
            write_output(job_id, args.format, stream)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def make_public_domain_clip(target: Path) -> Path:
    """A 4 s clip panning over Grace Hopper's portrait (US Navy photo, public domain, shipped with matplotlib)."""
    from matplotlib import cbook

    portrait = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if portrait is None:
        raise FervidError("matplotlib's sample portrait is missing; pass a clip to `fervid analyze` instead",
                          code=DEMO_MEDIA_MISSING)
    height, width = portrait.shape[:2]
    with av.open(str(target), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for step in range(40):
            zoom = 1.0 + 0.25 * np.sin(step / 40 * np.pi)
            crop_w, crop_h = int(width / zoom), int(height / zoom * 0.75)
            x0 = int((width - crop_w) * (0.5 + 0.3 * np.sin(step / 13)))
            y0 = (height - crop_h) // 3
            frame = np.asarray(cv2.resize(portrait[y0 : y0 + crop_h, x0 : x0 + crop_w], (480, 360)), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target


def print_summary(job_id: str, stream: TextIO) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        described = job_to_dict(session, job)
        summary = results.summary(session, job_id)
        timeline = results.full_timeline(session, job_id)
    media, model = described["media"], described["model"]
    print(f"model    {model['name']} {model['version']} on {model['backend']} ({model['precision']}), faces found by "
          f"{model['detector']}", file=stream)
    print(f"media    {job.filename}: {media['kind']} {media['width']}x{media['height']}, "
          f"{media['duration_ms'] / 1000:.2f} s, {media['frame_count']} frames; sampled {len(timeline)} "
          f"at {job.sample_fps:g} fps", file=stream)
    left_out = summary["overall"]["faces_left_out"]
    faces = f"{left_out} face{'' if left_out == 1 else 's'}"
    if not summary["tracks"]:
        print("no faces found" if not left_out else f"{faces} found, none reliable enough to summarise (small, "
              "blurred, turned or tilted: each face's quality is in the timeline)", file=stream)
    elif left_out:
        print(f"{faces} not reliable (small, blurred, turned or tilted), left out of the figures below", file=stream)
    for track in summary["tracks"]:
        means = track["mean_emotions"]
        print(f"\nface #{track['track_id']}  {track['first_ms'] / 1000:.2f}-{track['last_ms'] / 1000:.2f} s, "
              f"{track['frames']} frames, mostly {track['dominant']}", file=stream)
        print(f"  {'':<9}{'mean':>6}  {'top in':>6}", file=stream)
        for label in sorted(EMOTIONS, key=lambda name: -means[name]):
            print(f"  {label:<9}{means[label]:6.1%}  {track['dominant_share'][label]:6.0%}  "
                  f"{'#' * round(40 * means[label])}", file=stream)
        moments = [(item["timestamp_ms"], face) for item in timeline for face in item["faces"]
                   if face["track_id"] == track["track_id"]]
        line = "  ".join(f"{ms / 1000:.1f}s {face['dominant']}" for ms, face in moments[:: max(1, len(moments) // 8)])
        print(f"  timeline: {line}", file=stream)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fps", type=float, default=5.0)


def development_shared_file(*parts: str) -> Path | None:
    """A development convenience: `../shared/<parts>` beside this checkout, when it is there (never in an installed
    package). The demo's face clip and YuNet model come from it; without it the demo makes its own clip."""
    path = Path(__file__).resolve().parents[2].joinpath("shared", *parts)
    return path if path.is_file() else None


def run_demo(args: argparse.Namespace) -> int:
    settings = get_settings()
    shared_clip = development_shared_file("media", "single_face.mp4")
    shared_yunet = development_shared_file("models", "face_detection_yunet_2023mar.onnx")
    if settings.detector_path is None and shared_yunet is not None:
        settings = settings.model_copy(update={"detector_path": shared_yunet})  # the cached settings stay as read
    with tempfile.TemporaryDirectory() as scratch:
        clip = shared_clip or make_public_domain_clip(Path(scratch) / "grace_hopper.mp4")
        print(f"fervid demo: analysing {clip} on {settings.database_url}", file=sys.stderr)
        job_id = analyze_file(clip, args.fps, settings)
    failure = job_failure(job_id)
    if failure is not None:
        raise failure
    print_summary(job_id, sys.stdout)
    return 0
