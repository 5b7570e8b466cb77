"""Annotated videos (fervid/annotated.py says who asks for them and where they go): every frame of a job's media,
decoded as the analysis decoded it (in a decoder process under the decoders' memory and CPU limits, upright and
mirrored as analysed), its faces painted on (worker/overlay.py), encoded as H.264 in MP4 at the source's size and
timing.

Only the frames are drawn: the source's audio is not carried over.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from fervid import annotated, results
from fervid.db import session_scope
from fervid.errors import DECODE_ERROR, PROCESSING_FAILED, UNSUPPORTED_MEDIA, FervidError, MediaError
from fervid.media_store import Downloads, local_copy, storage_from_url
from fervid.settings import Settings
from fervid.stopping import Stopped
from fervid.tables import Face, Job
from worker.media.isolated import DecoderLimits, IsolatedDecode, probe_isolated
from worker.media.limits import MediaLimits
from worker.overlay import FacePainter, FaceSample, FaceTimeline, samples_from_timeline
from worker.transient import TRANSIENT

log = logging.getLogger(__name__)

# Sampling this often plans every frame of any real video (frames closer than a millisecond are one frame).
EVERY_FRAME_FPS = 1000.0
TIME_BASE = Fraction(1, 90000)  # the MP4's clock: exact for every common frame rate
# x264's fastest preset: the x264 PyAV ships takes ~7 ms a 640x480 frame at "veryfast" on 2 cores, 2.5x its
# "ultrafast" time, for files a third the size; the render must keep pace with the analysis (bench/annotate_bench.py).
CRF = "23"
PRESET = "ultrafast"
# BT.601, limited range: what OpenCV's BGR -> I420 computes, written in the stream so players convert back alike.
BT601 = {"colorspace": 6, "color_primaries": 6, "color_trc": 6, "color_range": 1}  # SMPTE 170M, MPEG range
HEARTBEAT_S = 2.0


def write_annotated(source: Path, target: Path, job_id: str, limits: MediaLimits, decode_memory_mb: int,
                    threads: int, on_frames: Callable[[int, int], bool] = lambda done, total: True) -> int:
    """Writes the job's annotated video of `source` (its media) to `target` on `threads` threads; returns the frames
    written. `on_frames(done, total)` is called every HEARTBEAT_S: False stops the render (Stopped)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise Stopped()
        interval_ms, duration_ms = 1000.0 / job.sample_fps, job.duration_ms
        track_ids = list(session.scalars(select(Face.track_id).where(Face.job_id == job_id).distinct()))
    decoder = DecoderLimits(decode_memory_mb, annotated.render_limits_s(duration_ms)[0])
    info, plan = probe_isolated(source, EVERY_FRAME_FPS, limits, decoder)
    if info.kind != "video" or not plan:
        raise MediaError(UNSUPPORTED_MEDIA, "the media is a still image: its faces are in the timeline, and the "
                         "viewer draws them")
    painter = FacePainter(info.width, info.height, track_ids)
    rate = Fraction(info.fps or 25.0).limit_denominator(1001)
    warnings: list[str] = []
    frames = IsolatedDecode(source, plan, warnings, limits.max_pixels, decoder)
    with _timeline_samples(job_id) as samples, _Mp4Writer(target, info.width, info.height, rate, threads) as writer:
        timeline = FaceTimeline(samples, interval_ms)
        written, beaten = 0, time.monotonic()
        for planned, image in frames:
            painter.paint(image, timeline.faces_at(planned.timestamp_ms))
            writer.write(image, planned.timestamp_ms)
            written += 1
            if time.monotonic() - beaten >= HEARTBEAT_S:
                beaten = time.monotonic()
                if not on_frames(written, len(plan)):
                    frames.cancel()
                    raise Stopped()
    if not written:
        raise MediaError(DECODE_ERROR, "no frame of the media could be decoded")
    on_frames(written, len(plan))
    for warning in warnings:
        log.info("job %s: annotated video: %s", job_id, warning)
    return written


@contextmanager
def _timeline_samples(job_id: str) -> Iterator[Iterator[FaceSample]]:
    # A session of its own, read in keyset batches as the frames advance: memory stays flat for any length.
    with session_scope() as session:
        yield samples_from_timeline(results.iter_timeline(session, job_id))


class _Mp4Writer:
    """H.264 (yuv420p, so any player plays it) in MP4 with the index first, so browsers play it as it downloads. Odd
    sizes, which yuv420p cannot hold, get one black row or column."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, threads: int) -> None:
        self._container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._width, self._height = width + width % 2, height + height % 2
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = self._width, self._height, "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.codec_context.thread_count = max(1, threads)
        for name, value in BT601.items():
            setattr(stream.codec_context, name, value)
        stream.options = {"crf": CRF, "preset": PRESET}
        self._stream = stream
        self._last_pts = -1

    def __enter__(self) -> _Mp4Writer:
        return self

    def write(self, image: NDArray[np.uint8], timestamp_ms: float) -> None:
        if image.shape[1] != self._width or image.shape[0] != self._height:
            image = cv2.copyMakeBorder(image, 0, self._height - image.shape[0], 0, self._width - image.shape[1],
                                       cv2.BORDER_CONSTANT, value=(0, 0, 0)).astype(np.uint8, copy=False)
        # OpenCV's conversion: a quarter of the time FFmpeg's software scaler takes for the same frame.
        planes = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        # The source's own times, so variable frame rates stay in sync; never two frames at one tick.
        self._last_pts = max(round(timestamp_ms * 90), self._last_pts + 1)
        frame.pts, frame.time_base = self._last_pts, TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()


def render_job_video(job_id: str, token: str, settings: Settings, threads: int) -> None:
    """The render the API asked for with `token`: stored in the job's folder and marked ready, or failed with the
    reason; nothing when the render is no longer this token's (taken over, or the job deleted)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or not annotated.holds(session, job_id, token):
            return
        uri, fence, duration_ms = job.source_uri, settings.job_source_fence(job), job.duration_ms
    storage = storage_from_url(settings.storage_url)
    key = annotated.annotated_key(job_id)
    try:
        with local_copy(uri, Downloads.from_settings(settings), cache_key=job_id, fence=fence) as source, \
                tempfile.TemporaryDirectory(prefix="fervid-annotate-") as folder:
            target = Path(folder) / "annotated.mp4"
            write_annotated(source, target, job_id, MediaLimits.from_settings(settings), settings.decode_memory_mb,
                            threads, on_frames=lambda done, total: annotated.heartbeat(job_id, token, done, total))
            size = target.stat().st_size
            with target.open("rb") as stream:
                stored_uri = storage.save(key, stream, annotated.max_annotated_bytes(duration_ms))
    except Stopped:
        log.info("job %s: annotated video no longer wanted (taken over, or the job deleted)", job_id)
        return
    except TRANSIENT:
        raise  # the task's retry
    except FervidError as error:  # the media's fault, a store refusing the file: the same on every try
        annotated.fail(job_id, token, error.code, str(error))
        return
    if not annotated.finish(job_id, token, stored_uri, size):
        with session_scope() as session:
            if session.get(Job, job_id) is None:  # deleted while this rendered: its folder is gone, and stays so
                storage.delete_folder(job_id)


def fail_slow(job_id: str, token: str, limit_s: float) -> None:
    annotated.fail(job_id, token, PROCESSING_FAILED, f"rendering the annotated video took longer than its limit of "
                   f"{limit_s:.0f} s")
