"""The pipeline in process on real faces (YuNet, a tiny real ONNX classifier): rotation and many faces."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from fervid.settings import Settings, get_settings
from models.backends import InferenceBackend
from models.classifier import EmotionClassifier
from models.detectors import Detection, FaceDetector
from worker.media.decode import decode_planned
from worker.media.limits import MediaLimits
from worker.media.probe import probe
from worker.pipeline import Analyzer, FaceFound, build_analyzer, carried_faces
from worker.tracking import iou

# The limits the settings default to, whatever the developer's environment says.
LIMITS = MediaLimits.from_settings(Settings.model_construct())


@pytest.fixture
def analyzer(fervid_env: pytest.MonkeyPatch, tiny_model_path: Path, yunet_path: Path) -> Analyzer:
    fervid_env.setenv("FERVID_MODEL_PATH", str(tiny_model_path))
    fervid_env.setenv("FERVID_DETECTOR_PATH", str(yunet_path))
    get_settings.cache_clear()
    return build_analyzer(get_settings())


def write_clip(path: Path, frames: list[np.ndarray], rotation_cw: int = 0) -> Path:
    """H.264 clip of `frames`; with `rotation_cw`, frames are stored turned and a display matrix turns them back."""
    turn = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
    stored = [cv2.rotate(f, turn[rotation_cw]) if rotation_cw else f for f in frames]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = stored[0].shape[1], stored[0].shape[0], "yuv420p"
        if rotation_cw:
            stream.set_display_rotation(-rotation_cw)  # PyAV takes the counter-clockwise angle
        for image in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def drifting_face(face: np.ndarray, frame_count: int, step_px: int) -> list[np.ndarray]:
    """`frame_count` frames of `face` on a grey canvas 120 px wider, moving right by `step_px` a frame."""
    canvas = np.full((face.shape[0], face.shape[1] + 120, 3), 90, np.uint8)
    frames = []
    for step in range(frame_count):
        frame = canvas.copy()
        frame[:, step_px * step : step_px * step + face.shape[1]] = face
        frames.append(frame)
    return frames


Face = tuple[int, tuple[int, int, int, int]]  # track id, box


def analyze(analyzer: Analyzer, clip: Path, fps: float = 10) -> list[list[Face]]:
    """(track id, box) of the faces of every sampled frame."""
    _, plan = probe(clip, fps, LIMITS)
    return [[(face.local_track, face.box) for face in record.faces]
            for record in analyzer.analyze(decode_planned(clip, plan, [], LIMITS.max_pixels))]


@pytest.mark.parametrize("rotation", [90, 270])
def test_a_phone_clip_stored_sideways_is_analysed_upright(
    analyzer: Analyzer, shared_dir: Path, tmp_path: Path, rotation: int
) -> None:
    # given a real face stored sideways with a display matrix, as phones record portrait video
    face = cv2.imread(str(shared_dir / "media" / "single_face.jpg"))
    frames = [np.roll(face, shift, axis=1) for shift in range(0, 40, 4)]
    clip = write_clip(tmp_path / "portrait.mp4", frames, rotation_cw=rotation)
    (upright,) = analyzer.detector.detect(frames[0])
    # when it is analysed
    info, _ = probe(clip, 10, LIMITS)
    faces = analyze(analyzer, clip)
    # then the frames are the upright ones: the same size, and the face where it is in the upright first frame
    assert (info.width, info.height) == (face.shape[1], face.shape[0])
    assert len(faces) == 10 and all([track for track, _ in frame] == [0] for frame in faces)
    track, box = faces[0][0]
    assert all(abs(a - b) <= 12 for a, b in zip(box, upright.box, strict=True)), (box, upright.box)


def test_many_faces_each_keep_their_own_track(analyzer: Analyzer, shared_dir: Path, tmp_path: Path) -> None:
    # given a crowd: the real face six times in a 3 x 2 grid, drifting right frame after frame
    face = cv2.resize(cv2.imread(str(shared_dir / "media" / "single_face.jpg")), (180, 180))
    grid = np.vstack([np.hstack([face] * 3)] * 2)
    canvas = np.full((400, 640, 3), 90, np.uint8)
    frames = []
    for step in range(10):
        frame = canvas.copy()
        frame[20:380, 40 + 3 * step : 580 + 3 * step] = grid
        frames.append(frame)
    clip = write_clip(tmp_path / "crowd.mp4", frames)
    # when it is analysed
    faces = analyze(analyzer, clip)
    # then every frame has the six faces, and each grid cell keeps its track id throughout
    cells = [{(round((box[0] - 40 - 3 * step) / 180), round((box[1] - 20) / 180)): track for track, box in frame}
             for step, frame in enumerate(faces)]
    assert len(cells) == 10 and all(len(frame) == 6 for frame in faces)
    assert all(cell == cells[0] for cell in cells) and sorted(cells[0].values()) == [0, 1, 2, 3, 4, 5]


def test_faces_of_skipped_frames_move_between_the_detected_ones() -> None:
    # given a face seen at two detected frames, one only at the first and one only at the second
    earlier = [FaceFound(0, (100, 50, 40, 40), 0.9, (10.0, -4.0)), FaceFound(1, (300, 50, 40, 40), 0.8, (0.0, 0.0))]
    later = [FaceFound(0, (120, 60, 44, 44), 0.7, (30.0, 4.0)), FaceFound(2, (500, 50, 40, 40), 0.9, None)]

    # when frames a quarter and three quarters of the way between them are filled in
    quarter, three_quarters = carried_faces(earlier, later, 0.25), carried_faces(earlier, later, 0.75)

    # then the face seen twice moves (and turns) in a straight line; the others are kept on their own half of the gap
    assert quarter == [FaceFound(0, (105, 52, 41, 41), pytest.approx(0.85), (15.0, -2.0)),
                       FaceFound(1, (300, 50, 40, 40), 0.8, (0.0, 0.0))]
    assert three_quarters == [FaceFound(0, (115, 58, 43, 43), pytest.approx(0.75), (25.0, 2.0)),
                              FaceFound(2, (500, 50, 40, 40), 0.9, None)]


class CountingDetector:
    """The real detector, counting the frames it is given."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector, self.calls = detector, 0
        self.name, self.reason, self.framing = detector.name, detector.reason, detector.framing

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.detector.detect(image)


@pytest.mark.parametrize("frame_count", [10, 11])
def test_detecting_every_300_ms_carries_the_face_through_the_frames_between(
        analyzer: Analyzer, shared_dir: Path, tmp_path: Path, frame_count: int) -> None:
    # given a real face drifting right at 10 fps, detected on every frame by one analyzer and every 300 ms (every third
    # frame) by another
    face = cv2.imread(str(shared_dir / "media" / "single_face.jpg"))
    clip = write_clip(tmp_path / "drift.mp4", drifting_face(face, frame_count, step_px=12))
    every_frame = analyze(analyzer, clip)
    counting = CountingDetector(analyzer.detector)
    every_third = Analyzer(counting, analyzer.classifier, analyzer.batch_size, analyzer.max_faces,
                           detect_interval_ms=300.0)

    # when
    carried = analyze(every_third, clip)

    # then the detector saw frames 0, 3, 6, 9 and the last; every frame has the face, on one track, about where the
    # detector puts it (its own box jitters by a few per cent from frame to frame)
    assert counting.calls == len(range(0, frame_count, 3)) + ((frame_count - 1) % 3 > 0)
    assert len(carried) == frame_count and all([track for track, _ in faces] == [0] for faces in carried)
    for (_, box), (_, expected) in zip([f[0] for f in carried], [f[0] for f in every_frame], strict=True):
        assert iou(box, expected) > 0.9, (box, expected)


def test_a_crowd_keeps_its_largest_faces_and_says_so(fervid_env: pytest.MonkeyPatch, tiny_model_path: Path,
                                                     yunet_path: Path, shared_dir: Path, tmp_path: Path) -> None:
    # given a frame of six faces, three large above three small, and a cap of three faces per frame
    fervid_env.setenv("FERVID_MODEL_PATH", str(tiny_model_path))
    fervid_env.setenv("FERVID_DETECTOR_PATH", str(yunet_path))
    fervid_env.setenv("FERVID_MAX_FACES_PER_FRAME", "3")
    get_settings.cache_clear()
    analyzer = build_analyzer(get_settings())
    face = cv2.imread(str(shared_dir / "media" / "single_face.jpg"))
    canvas = np.full((420, 640, 3), 90, np.uint8)
    for column in range(3):
        canvas[10:190, 20 + 210 * column : 200 + 210 * column] = cv2.resize(face, (180, 180))
        canvas[260:380, 50 + 210 * column : 170 + 210 * column] = cv2.resize(face, (120, 120))
    assert len(analyzer.detector.detect(canvas)) == 6
    clip = write_clip(tmp_path / "crowd.mp4", [canvas] * 5)
    _, plan = probe(clip, 10, LIMITS)
    # when it is analysed
    warnings: list[str] = []
    frames = analyzer.analyze(decode_planned(clip, plan, [], LIMITS.max_pixels), warnings=warnings)
    # then every frame keeps the three large faces, left to right, and the job is told once
    assert len(frames) == 5
    for frame in frames:
        assert [face.face_index for face in frame.faces] == [0, 1, 2]
        assert all(face.box[1] < 200 for face in frame.faces), frame.faces  # the top row
        assert [face.box[0] for face in frame.faces] == sorted(face.box[0] for face in frame.faces)
    assert warnings == ["some frames had more than 3 faces: only the 3 largest of each were analysed "
                        "(FERVID_MAX_FACES_PER_FRAME)"]


class ThreadRecordingBackend:
    """The real backend, slowed so that classification is the pipeline's longest stage (as ResNet50 is on a CPU),
    recording the thread of each call; `concurrent_runs` as the test says."""

    def __init__(self, backend: InferenceBackend, concurrent_runs: bool) -> None:
        self.backend, self.concurrent_runs = backend, concurrent_runs
        self.name, self.precision, self.max_batch = backend.name, backend.precision, backend.max_batch
        self.threads: list[str] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        time.sleep(0.3)
        return self.backend.run(batch)


@pytest.mark.parametrize("concurrent_runs", [True, False])
def test_a_slow_classifier_is_helped_by_the_pipeline_thread_only_where_the_backend_allows_it(
        analyzer: Analyzer, shared_dir: Path, tmp_path: Path, concurrent_runs: bool) -> None:
    # given 40 frames of a drifting face (five batches of eight frames) and a classifier slower than detection
    face = cv2.imread(str(shared_dir / "media" / "single_face.jpg"))
    clip = write_clip(tmp_path / "drift.mp4", drifting_face(face, 40, step_px=3))
    _, plan = probe(clip, 10, LIMITS)
    expected = analyzer.analyze(decode_planned(clip, plan, [], LIMITS.max_pixels))
    recording = ThreadRecordingBackend(analyzer.classifier.backend, concurrent_runs)
    slow = Analyzer(analyzer.detector, EmotionClassifier(analyzer.classifier.spec, recording), analyzer.batch_size,
                    analyzer.max_faces, analyzer.detect_interval_ms)
    progress: list[int] = []

    def on_progress(frames_done: int) -> bool:
        progress.append(frames_done)
        return True

    # when it is analysed
    records = slow.analyze(decode_planned(clip, plan, [], LIMITS.max_pixels), on_progress=on_progress)

    # then the records are those of the plain analysis, in frame order, reported batch by batch
    assert [(r.frame_index, [(f.local_track, f.box) for f in r.faces]) for r in records] == \
        [(r.frame_index, [(f.local_track, f.box) for f in r.faces]) for r in expected]
    for got, want in zip(records, expected, strict=True):
        np.testing.assert_allclose([f.probs for f in got.faces], [f.probs for f in want.faces], atol=1e-6)
    assert progress == sorted(progress) and progress[-1] == 40
    # and this thread classified some of the batches itself only where a second caller is allowed
    classify_thread = [name for name in recording.threads if name.startswith("fervid-classify")]
    assert classify_thread, recording.threads
    assert ("MainThread" in recording.threads) == concurrent_runs, recording.threads


def test_a_cancel_stops_the_classification_of_the_batches_still_queued(
        analyzer: Analyzer, shared_dir: Path, tmp_path: Path) -> None:
    # given 40 frames of a face and a slow classifier
    face = cv2.imread(str(shared_dir / "media" / "single_face.jpg"))
    clip = write_clip(tmp_path / "still.mp4", [face] * 40)
    _, plan = probe(clip, 10, LIMITS)
    recording = ThreadRecordingBackend(analyzer.classifier.backend, concurrent_runs=True)
    slow = Analyzer(analyzer.detector, EmotionClassifier(analyzer.classifier.spec, recording), analyzer.batch_size,
                    analyzer.max_faces, analyzer.detect_interval_ms)
    # when the job is cancelled as soon as the first batch is reported
    records = slow.analyze(decode_planned(clip, plan, [], LIMITS.max_pixels), on_progress=lambda done: False)
    # then the analysis stops there, with batches left unclassified
    assert len(records) == 8
    assert len(recording.threads) < 5, recording.threads
