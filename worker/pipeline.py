"""The pipeline as plain functions: sample frames -> detect faces -> track -> classify -> store.

Celery tasks (worker/tasks.py) and the in-process `fervid analyze` both call these; nothing here needs a broker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

from fervid.db import session_scope
from fervid.errors import MediaError
from fervid.media_store import local_copy
from fervid.settings import Settings
from fervid.sources import job_source_fence
from fervid.tables import Job, JobStatus, PlanRow
from fervid.worker_status import WorkerStatus
from models.backends import BackendOptions, select_backend
from models.classifier import EmotionClassifier
from models.detectors import Detection, FaceDetector, load_detector
from models.face_quality import head_pose, sharpness
from models.network_io import crop_face
from models.spec import DEFAULT_MODEL_PATH, read_model_spec
from worker import record_store
from worker.layout import DETECTOR_THREADS
from worker.media.isolated import DecoderLimits, IsolatedDecode, probe_isolated
from worker.media.limits import MediaLimits
from worker.media.plan import MediaInfo, PlannedFrame, split_plan
from worker.prefetch import Prefetched
from worker.tracking import FaceTracker

log = logging.getLogger(__name__)

class FaceFound(NamedTuple):
    track: int  # the tracker's id inside the segment
    box: tuple[int, int, int, int]
    score: float  # the detector's
    pose: tuple[float, float] | None  # (yaw, roll) in degrees from the detector's landmarks (models.face_quality)


_PendingFrame = tuple[PlannedFrame, list[FaceFound], list[NDArray[np.uint8]]]  # a frame, its faces and their crops
HEARTBEAT_EVERY_FRAMES = 8  # progress is reported this often (and at least once per batch) ...
HEARTBEAT_INTERVAL_S = 1.0  # ... and written to the database (progress, liveness, a cancel seen) at most this often
# Decoded frames waiting for detection: enough to hide decoding, few enough that memory stays a few frames.
PREFETCH_FRAMES = 4
# Batches handed to the classifier's thread and not yet done: one running and one waiting, so that it does not idle
# while the next batch is detected; more would only hold memory.
CLASSIFY_QUEUE = 2


def _between(earlier: FaceFound, later: FaceFound, fraction: float) -> FaceFound:
    """The face `fraction` of the way from its box (and pose) at one detected frame to its box at the next."""
    box = tuple(round(a + (b - a) * fraction) for a, b in zip(earlier.box, later.box, strict=True))
    pose = None if earlier.pose is None or later.pose is None else (
        earlier.pose[0] + (later.pose[0] - earlier.pose[0]) * fraction,
        earlier.pose[1] + (later.pose[1] - earlier.pose[1]) * fraction)
    return FaceFound(earlier.track, (box[0], box[1], box[2], box[3]),
                     earlier.score + (later.score - earlier.score) * fraction, pose)


def carried_faces(earlier: list[FaceFound], later: list[FaceFound], fraction: float) -> list[FaceFound]:
    """The faces of a frame the detector skipped, `fraction` of the way (0..1) from one detected frame to the next:
    a track found at both moves in a straight line between its two boxes; one found at only one of them is kept on
    that one's half of the gap, where it was last or next seen."""
    later_by_track = {face.track: face for face in later}
    earlier_tracks = {face.track for face in earlier}
    faces = [_between(face, later_by_track[face.track], fraction) if face.track in later_by_track else face
             for face in earlier if face.track in later_by_track or fraction < 0.5]
    return faces + [face for face in later if face.track not in earlier_tracks and fraction >= 0.5]


@dataclass
class Analyzer:
    """Everything a worker process loads once: the detector, the classifier and its backend."""

    detector: FaceDetector
    classifier: EmotionClassifier
    batch_size: int
    max_faces: int  # per frame (FERVID_MAX_FACES_PER_FRAME): the largest are kept
    # The detector runs on a sampled frame once `detect_interval_ms` have passed since the last one it ran on, and on
    # the last; the faces of the frames between are carried from the two detected frames around them
    # (`carried_faces`), as DeepStream's `interval` does but in time, so a job's sampling rate does not stretch it.
    detect_interval_ms: float = 0.0

    @property
    def model_info(self) -> record_store.ModelInfo:
        spec = self.classifier.spec
        backend = self.classifier.backend
        return record_store.ModelInfo(name=spec.name, version=spec.version, backend=backend.name,
                                      precision=backend.precision, detector=self.detector.name)

    def analyze(self, frames: Iterable[tuple[PlannedFrame, NDArray[np.uint8]]],
                on_progress: Callable[[int], bool] | None = None,
                warnings: list[str] | None = None) -> list[record_store.FrameRecord]:
        """Runs detection and tracking frame by frame and classification on batches gathered across frames, the
        three overlapped: frames are decoded ahead on one thread, and batches are classified on another while the
        next ones are detected. Records come out in frame order.

        The classifier is the longest stage, so this thread does not wait for it: when the classifier's thread has
        `CLASSIFY_QUEUE` batches and the backend computes on the caller's thread (`concurrent_runs`), this thread
        classifies the next batch itself, on the core detection would otherwise leave idle.

        `on_progress(frames_done)` is called as frames finish; when it returns False the work stops early and
        what is returned must not be stored (the job was cancelled or taken over). A frame with more than
        `max_faces` faces keeps its largest, and `warnings` (appended) says so once.
        """
        records: list[record_store.FrameRecord] = []
        pending: list[_PendingFrame] = []
        classified: deque[tuple[list[_PendingFrame], Future[NDArray[np.float32]]]] = deque()  # in frame order

        def emit(undone_allowed: int) -> bool:
            """Records of the classified batches in order: each one at the head that is done, and the head waited
            for while more than `undone_allowed` batches remain. False when the work must stop."""
            while classified and (classified[0][1].done() or len(classified) > undone_allowed):
                batch, probs_ready = classified.popleft()
                probs = probs_ready.result()
                row = 0
                for planned, faces, crops in batch:
                    face_records = []
                    for face_index, (face, crop) in enumerate(zip(faces, crops, strict=True)):
                        yaw, roll = face.pose if face.pose is not None else (None, None)
                        face_records.append(record_store.FaceRecord(
                            face_index=face_index, local_track=face.track, box=face.box, score=face.score,
                            probs=probs[row].tolist(), sharpness=sharpness(crop), yaw=yaw, roll=roll))
                        row += 1
                    records.append(record_store.FrameRecord(planned.frame_index, planned.timestamp_ms, face_records))
                if on_progress is not None and not on_progress(len(records)):
                    return False
            return True

        def submit(classifying: ThreadPoolExecutor) -> bool:
            """Classifies the pending frames' faces: on the classifier's thread while it has room, else here (or,
            on a backend that cannot take a second caller, after waiting for room)."""
            nonlocal pending
            # Waits for room on the thread's queue; with a second caller allowed, only once batches done here pile
            # up behind a slow one there, so that memory stays a few batches.
            if not emit(CLASSIFY_QUEUE + 1 if self.classifier.backend.concurrent_runs else CLASSIFY_QUEUE - 1):
                return False
            batch = self.classifier.prepare([crop for _, _, frame_crops in pending for crop in frame_crops])
            if sum(not ready.done() for _, ready in classified) < CLASSIFY_QUEUE:
                probs_ready = classifying.submit(self.classifier.classify_batch, batch)
            else:
                probs_ready = Future()
                probs_ready.set_result(self.classifier.classify_batch(batch))
            classified.append((pending, probs_ready))
            pending = []
            return True

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fervid-classify") as classifying, \
                Prefetched(frames, PREFETCH_FRAMES) as decoded:
            try:
                pending_faces = since_heartbeat = 0
                for planned, image, faces in self.found_faces(decoded, warnings):
                    pending.append((planned, faces, [crop_face(image, face.box, self.detector.framing)
                                                     for face in faces]))
                    pending_faces += len(faces)
                    since_heartbeat += 1
                    if pending_faces >= self.batch_size or since_heartbeat >= HEARTBEAT_EVERY_FRAMES:
                        pending_faces = since_heartbeat = 0
                        if not submit(classifying):
                            return records
                if pending and not submit(classifying):
                    return records
                emit(0)
            finally:  # stopped early or failed: the batches still queued are not classified
                for _, probs_ready in classified:
                    probs_ready.cancel()
        return records

    def found_faces(self, frames: Iterable[tuple[PlannedFrame, NDArray[np.uint8]]], warnings: list[str] | None = None,
                    ) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8], list[FaceFound]]]:
        """Each frame with its tracked faces, in order: detected every `detect_interval_ms` and on the last frame,
        carried between (which holds back the frames of one interval)."""
        tracker = FaceTracker()
        skipped: list[tuple[PlannedFrame, NDArray[np.uint8]]] = []
        detected: tuple[PlannedFrame, list[FaceFound]] | None = None

        def detect(planned: PlannedFrame, image: NDArray[np.uint8],
                   ) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8], list[FaceFound]]]:
            nonlocal detected, skipped
            detections = self.detector.detect(image)
            if len(detections) > self.max_faces:
                detections = largest_faces(detections, self.max_faces)
                if warnings is not None and too_many_faces(self.max_faces) not in warnings:
                    warnings.append(too_many_faces(self.max_faces))
            tracks = tracker.update(planned.timestamp_ms, [d.box for d in detections])
            faces = [FaceFound(track, d.box, d.score, None if d.landmarks is None else head_pose(d.landmarks))
                     for track, d in zip(tracks, detections, strict=True)]
            if detected is not None:
                earlier, earlier_faces = detected
                span = max(planned.timestamp_ms - earlier.timestamp_ms, 1e-9)
                for between, between_image in skipped:
                    fraction = (between.timestamp_ms - earlier.timestamp_ms) / span
                    yield between, between_image, carried_faces(earlier_faces, faces, fraction)
            skipped = []
            detected = (planned, faces)
            yield planned, image, faces

        for planned, image in frames:
            if detected is None or planned.timestamp_ms - detected[0].timestamp_ms >= self.detect_interval_ms:
                yield from detect(planned, image)
            else:
                skipped.append((planned, image))
        if skipped:  # the last frame is always detected: the frames before it have a face to move towards
            last, last_image = skipped.pop()
            yield from detect(last, last_image)


def largest_faces(detections: list[Detection], most: int) -> list[Detection]:
    """The `most` largest detections by box area (the higher score first among equals), in their own order."""
    ranked = sorted(range(len(detections)), key=lambda i: (-detections[i].box[2] * detections[i].box[3],
                                                            -detections[i].score, i))
    return [detections[i] for i in sorted(ranked[:most])]


def too_many_faces(most: int) -> str:
    """The job's warning for frames that had more faces than were analysed (one text, so segments share it)."""
    return (f"some frames had more than {most} faces: only the {most} largest of each were analysed "
            "(FERVID_MAX_FACES_PER_FRAME)")


def build_analyzer(settings: Settings) -> Analyzer:
    if settings.inference_threads:
        cv2.setNumThreads(settings.inference_threads)
    model_path = settings.model_path or DEFAULT_MODEL_PATH
    spec = read_model_spec(model_path)
    backend = select_backend(model_path, settings.backend, max_batch=max(settings.classify_batch, 1),
                             options=BackendOptions.from_settings(settings))
    log.info("emotion model %s %s on %s; faces batched by %d", spec.name, spec.version, backend.name,
             settings.classify_batch)
    return Analyzer(load_detector(settings, DETECTOR_THREADS), EmotionClassifier(spec, backend),
                    settings.classify_batch, settings.max_faces_per_frame, settings.detect_interval_ms)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_status(analyzer: Analyzer) -> WorkerStatus:
    """What this process runs, as /readyz shows it."""
    model = analyzer.model_info
    return WorkerStatus(name=worker_name(), detector=model.detector, detector_reason=analyzer.detector.reason,
                        backend=model.backend, precision=model.precision, model_name=model.name,
                        model_version=model.version)


def to_plan_rows(plan: list[PlannedFrame]) -> list[PlanRow]:
    return [PlanRow(f.frame_index, f.timestamp_ms, f.pts, f.keyframe_pts, f.by_order, f.keyframe_pos) for f in plan]


def from_plan_rows(rows: list[PlanRow]) -> list[PlannedFrame]:
    return [PlannedFrame(r.frame_index, r.timestamp_ms, r.pts, r.keyframe_pts, r.by_order, r.keyframe_pos)
            for r in rows]


def load_job(job_id: str) -> Job | None:
    with session_scope() as session:
        return session.get(Job, job_id)


def probe_segments(path: Path, job: Job, settings: Settings) -> tuple[MediaInfo, list[list[PlannedFrame]]]:
    decoder = DecoderLimits(settings.decode_memory_mb, settings.prepare_soft_limit_s())
    info, plan = probe_isolated(path, job.sample_fps, MediaLimits.from_settings(settings), decoder)
    return info, split_plan(plan, settings.segment_seconds * 1000.0)


def crash_if_test_file(stage: str, job: Job, settings: Settings) -> None:
    """The test seam FERVID_TEST_CRASH_ON="<stage>:<filename>": this process dies here, as a decoder crash would."""
    if settings.test_crash_on and job.filename and settings.test_crash_on == f"{stage}:{job.filename}":
        log.error("job %s: FERVID_TEST_CRASH_ON=%s: exiting", job.id, settings.test_crash_on)
        os._exit(70)


@contextmanager
def prepare_heartbeats(job_id: str, interval_s: float) -> Iterator[None]:
    """Refreshes the preparing job's heartbeat every `interval_s` from a thread while the block runs (a long
    download or probe), so the reaper does not hand the prepare to another worker."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                if not record_store.prepare_heartbeat(job_id):
                    return
            except Exception:  # a database blip: the next beat tries again
                log.warning("job %s: prepare heartbeat failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"fervid-prepare-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def job_media(job: Job, settings: Settings, operator_source: bool) -> AbstractContextManager[Path]:
    """The job's media as a local path, read inside its tenant's locations (FERVID_FILE_URI_ROOTS ...) unless
    `operator_source`: `fervid analyze` reads the file its operator named."""
    fence = None if operator_source else job_source_fence(job, settings)
    return local_copy(job.source_uri, settings, cache_key=job.id, fence=fence)


def prepare_job(job_id: str, model: record_store.ModelInfo, settings: Settings, *,
                operator_source: bool = False) -> list[int]:
    """Probes the job's media and creates its segments; returns the segments to process.

    Bad media fails the job with its code; nothing raises for it.
    """
    job = load_job(job_id)
    if job is None:
        return []
    try:
        with prepare_heartbeats(job_id, settings.stale_after_s / 4), \
                job_media(job, settings, operator_source) as path:
            crash_if_test_file("prepare", job, settings)
            media, segments = probe_segments(path, job, settings)
    except MediaError as error:
        log.info("job %s failed: %s: %s", job_id, error.code, error.message)
        record_store.fail_job(job_id, error.code, error.message)
        return []
    return record_store.start_job(job_id, media, [to_plan_rows(s) for s in segments], model,
                                  None if operator_source else settings.tenant_quota())


def process_segment(job_id: str, index: int, analyzer: Analyzer, settings: Settings,
                    on_frames: Callable[[int], None] | None = None, *, operator_source: bool = False) -> bool:
    """Analyzes and stores one segment; returns True when this call ended the job (completed it, or failed it for
    bad media), so the caller sends its webhook.

    `on_frames(frames_done)` reports this segment's progress (the CLI's progress bar)."""
    job = load_job(job_id)
    if job is None or job.status != JobStatus.running:
        return False
    warnings: list[str] = []

    last_beat = -HEARTBEAT_INTERVAL_S

    def on_progress(frames_done: int) -> bool:
        nonlocal last_beat
        if on_frames is not None:
            on_frames(frames_done)
        if time.monotonic() - last_beat < HEARTBEAT_INTERVAL_S:
            return True  # a commit per report would cost more than the frames between (SQLite syncs each one)
        last_beat = time.monotonic()
        return record_store.heartbeat(job_id, index, frames_done)

    try:
        # The media is fetched before the claim: a long download must not look like a dead worker to the reaper.
        with job_media(job, settings, operator_source) as path:
            rows = record_store.claim_segment(job_id, index, worker_name(), settings.max_attempts)
            if rows is None:
                if record_store.fail_exhausted_segment(job_id, index, settings.max_attempts):
                    return True
                # Done already (a redelivery): finish the job in case the worker that stored it died first.
                return record_store.finish_job_if_complete(job_id)
            crash_if_test_file("segment", job, settings)
            plan = from_plan_rows(rows)
            decoder = DecoderLimits(settings.decode_memory_mb, settings.segment_soft_limit_s())
            frames = IsolatedDecode(path, plan, warnings, settings.max_pixels, decoder)
            records = analyzer.analyze(frames, on_progress, warnings)
    except MediaError as error:
        return record_store.fail_job(job_id, error.code, error.message)
    if len(records) < len(plan) and not record_store.heartbeat(job_id, index, len(records)):
        return False  # stopped early: cancelled, deleted or taken over
    if not record_store.store_segment(job_id, index, records, warnings):
        return False
    return record_store.finish_job_if_complete(job_id)
