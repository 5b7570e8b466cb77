"""fervid against the `fer` library (Haar cascade + a 64 px mini-Xception) on the same clip, every frame.

    .venv/bin/python bench/peer_fer.py [--clip PATH] [--repeat 3] [--peer-venv runs/peer-fer-venv]

Whole processes, each timed from start to exit: `fervid analyze CLIP --fps <the clip's rate>` against a script
that feeds every frame to `fer.FER().detect_emotions`, the loop its README shows. The peer lives in a bench-only
virtualenv made on first use (`pip install fer==25.10.3` and its runtime); nothing of it enters the project.
Without --clip, the clip is ../shared/media/single_face.mp4 played LOOPS times (a 640x360 talking head).

Then, in this process and round by round: decoding (in a decoder process, as jobs decode), detection and
classification each measured alone on the clip's frames, then the same frames analysed end to end (the pipeline
overlaps them), with the pipeline thread helping the classifier and without. Prints medians with min/max and the
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.media_factory import write_looped_clip  # noqa: E402
from bench.shared_data import SHARED, with_shared_yunet  # noqa: E402
from fervid.sampling import PlannedFrame  # noqa: E402
from fervid.settings import get_settings  # noqa: E402
from models.cpu_features import read_cpu_features  # noqa: E402
from models.network_io import crop_face  # noqa: E402
from worker.layout import usable_cores, with_thread_share  # noqa: E402
from worker.media.decode import decode_planned  # noqa: E402
from worker.media.isolated import DecoderLimits, IsolatedDecode  # noqa: E402
from worker.media.limits import MediaLimits  # noqa: E402
from worker.media.probe import probe  # noqa: E402
from worker.pipeline import build_analyzer  # noqa: E402

PEER_REQUIREMENTS = ["fer==25.10.3", "tensorflow-cpu", "opencv-python-headless<5", "pandas", "requests",
                     "moviepy<2", "tqdm", "matplotlib", "pillow", "setuptools<81"]
LOOPS = 6
PEER_SCRIPT = """
import sys, cv2
from fer.fer import FER
detector = FER(mtcnn=False)
capture = cv2.VideoCapture(sys.argv[1])
frames = faces = 0
while True:
    ok, frame = capture.read()
    if not ok:
        break
    faces += len(detector.detect_emotions(frame))
    frames += 1
print(frames, faces)
"""


def ensure_peer(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # fer's own pins pull the GPU TensorFlow and facenet-pytorch (only for MTCNN); its Haar path needs these.
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", PEER_REQUIREMENTS[0]], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS[1:]], check=True)
    return python


def timed(repeat: int, work: Callable[[], object]) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return times, result


def spread(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer-venv", type=Path, default=ROOT / "runs" / "peer-fer-venv")
    parser.add_argument("--skip-peer", action="store_true", help="only fervid's own stage and end-to-end figures")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fervid-peer-"))
    if args.clip is None:
        source = SHARED / "media" / "single_face.mp4"
        if not source.is_file():
            print(f"bench/peer_fer.py: {source} not found (needs ../shared/media, or pass --clip); skipped")
            return 0
        args.clip = write_looped_clip(source, scratch / "talking_head.mp4", LOOPS)
    # the classifier's threads as `fervid analyze`'s, and ../shared's YuNet for both unless one is configured
    settings = with_thread_share(with_shared_yunet(get_settings()), usable_cores())
    env = {**os.environ, "FERVID_DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}"}
    if settings.detector_path is not None:
        env["FERVID_DETECTOR_PATH"] = str(settings.detector_path)
    # 1000 fps: above any real rate, so every frame is sampled
    info, plan = probe(args.clip, 1000.0, MediaLimits.from_settings(settings))
    print(f"CPU: {read_cpu_features().describe()}, {os.cpu_count()} logical cores")
    print(f"clip: {args.clip} ({info.width}x{info.height}, {len(plan)} frames, {info.fps:.3f} fps)")

    fervid_cmd = [str(ROOT / ".venv" / "bin" / "fervid"), "analyze", str(args.clip), "--fps", "1000",
                  "--out", str(scratch / "fervid.json")]

    def run_fervid() -> None:
        subprocess.run(fervid_cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    if args.skip_peer:
        fervid_times, _ = timed(args.repeat, run_fervid)
        print(f"fervid analyze (whole process): {spread(fervid_times)}")
    else:
        python = ensure_peer(args.peer_venv)
        peer_cmd = [str(python), "-c", PEER_SCRIPT, str(args.clip)]
        peer_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        run_fervid()  # warm-ups: file caches, lazy compilation
        peer_out = subprocess.run(peer_cmd, check=True, capture_output=True, text=True, env=peer_env).stdout
        fervid_times, peer_times = [], []
        for _ in range(args.repeat):  # in turn, so that a drift of the machine's speed hits both alike
            fervid_times += timed(1, run_fervid)[0]
            peer_times += timed(1, lambda: subprocess.run(peer_cmd, check=True, capture_output=True,
                                                          env=peer_env))[0]
        peer_frames, peer_faces = peer_out.split()[-2:]
        ratios = [peer / ours for peer, ours in zip(peer_times, fervid_times, strict=True)]
        print(f"fervid analyze (whole process): {spread(fervid_times)}")
        print(f"fer {PEER_REQUIREMENTS[0]} (whole process, {peer_frames} frames, {peer_faces} faces): "
              f"{spread(peer_times)}")
        print(f"fervid speed-up over fer, pair by pair: median x{statistics.median(ratios):.2f} "
              f"(min x{min(ratios):.2f}, max x{max(ratios):.2f})")

    analyzer = build_analyzer(settings)
    max_pixels = settings.max_pixels
    decode_planned_frames = list(decode_planned(args.clip, plan, [], max_pixels))
    decoder = DecoderLimits(settings.decode_memory_mb, settings.segment_soft_limit_s())

    def decoded(frames: list[PlannedFrame]) -> IsolatedDecode:
        """The frames as a job gets them: from a decoder process (worker/media/isolated.py)."""
        return IsolatedDecode(args.clip, frames, [], max_pixels, decoder)

    analyzer.analyze(decoded(plan[:4]))  # warm-up: first inference allocates, the fork server starts
    # Detection as the pipeline runs it: on the frames FERVID_DETECT_INTERVAL_MS picks, faces carried between.
    found = list(analyzer.found_faces(decode_planned_frames))
    crops = [crop_face(image, face.box, analyzer.detector.framing) for _, image, faces in found for face in faces]

    def classify_all() -> None:
        for start in range(0, len(crops), analyzer.batch_size):
            analyzer.classifier.classify(crops[start : start + analyzer.batch_size])

    # Round by round, each stage alone and then the whole, so that a drift of the machine's speed (a shared host)
    # hits both sides of each round's ratio alike.
    decode_times, detect_times, classify_times, e2e_times, unhelped_times, overlap = [], [], [], [], [], []
    for _ in range(args.repeat):
        decode_times += timed(1, lambda: sum(1 for _ in decoded(plan)))[0]
        detect_times += timed(1, lambda: list(analyzer.found_faces(decode_planned_frames)))[0]
        classify_times += timed(1, classify_all)[0]
        e2e_time, records = timed(1, lambda: analyzer.analyze(decoded(plan)))
        e2e_times += e2e_time
        overlap.append(e2e_time[0] / (decode_times[-1] + detect_times[-1] + classify_times[-1]))
        # the baseline: the pipeline thread never classifies (as on a backend that takes one caller)
        helps, analyzer.classifier.backend.concurrent_runs = analyzer.classifier.backend.concurrent_runs, False
        unhelped_times += timed(1, lambda: analyzer.analyze(decoded(plan)))[0]
        analyzer.classifier.backend.concurrent_runs = helps
    stages = statistics.median(decode_times) + statistics.median(detect_times) + statistics.median(classify_times)
    e2e = statistics.median(e2e_times)
    print(f"decode alone (a decoder process, as jobs decode): {spread(decode_times)}; "
          f"detect alone (every {analyzer.detect_interval_ms:g} ms, faces carried between): {spread(detect_times)}; "
          f"classify alone ({len(crops)} faces, {analyzer.classifier.backend.name} "
          f"{analyzer.classifier.backend.precision}, {settings.inference_threads} thread(s)): {spread(classify_times)}")
    print(f"end to end in process: {spread(e2e_times)}; end to end / sum of stages alone, round by round: median "
          f"{statistics.median(overlap):.2f} (min {min(overlap):.2f}, max {max(overlap):.2f})")
    print(f"end to end, the pipeline thread never classifying: {spread(unhelped_times)}; helped / not, round by "
          f"round: median {statistics.median(h / u for h, u in zip(e2e_times, unhelped_times, strict=True)):.2f}")
    print(json.dumps({"frames": len(plan), "faces": len(crops), "fervid_s": statistics.median(fervid_times),
                      "stages_s": stages, "end_to_end_s": e2e, "ratio": statistics.median(overlap),
                      "records": len(records)}))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
