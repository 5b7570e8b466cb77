"""The analysis: decoded frames -> detect faces -> track -> classify -> records, with no database or broker.

worker.runner runs it on a claimed segment and stores what it returns.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

from fervid.sampling import PlannedFrame
from fervid.settings import Settings
from models.backends import BackendOptions, select_backend
from models.classifier import EmotionClassifier
from models.detectors import Detection, FaceDetector, load_detector
from models.face_quality import head_pose, sharpness
from models.network_io import crop_face
from models.spec import DEFAULT_MODEL_PATH, read_model_spec
from worker.layout import DETECTOR_THREADS
from worker.prefetch import Prefetched
from worker.records import FaceRecord, FrameRecord, ModelInfo
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
    def model_info(self) -> ModelInfo:
        spec = self.classifier.spec
        backend = self.classifier.backend
        return ModelInfo(name=spec.name, version=spec.version, backend=backend.name,
                                      precision=backend.precision, detector=self.detector.name)

    def analyze(self, frames: Iterable[tuple[PlannedFrame, NDArray[np.uint8]]],
                on_progress: Callable[[int], bool] | None = None,
                warnings: list[str] | None = None) -> list[FrameRecord]:
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
        records: list[FrameRecord] = []
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
                        face_records.append(FaceRecord(
                            face_index=face_index, local_track=face.track, box=face.box, score=face.score,
                            probs=probs[row].tolist(), sharpness=sharpness(crop), yaw=yaw, roll=roll))
                        row += 1
                    records.append(FrameRecord(planned.frame_index, planned.timestamp_ms, face_records))
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
