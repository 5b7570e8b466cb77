"""What decoding in a decoder process of its own costs, against probing and decoding the same media in this process,
measured in the same run.

    .venv/bin/python bench/decode_isolation.py [--repeat 5]

For a phone-sized photo, a 40-Mpixel photo (the default FERVID_MAX_PIXELS) and 12 s of 1080p video sampled at
5 fps (a segment's worth of frames), prints the best of --repeat runs of probe + decode in this process and through
worker.media.isolated (two decoder processes: the prepare's probe and the segment's decoding, forked by a fork
server started before the timing), and the difference; then the same segment end to end (the shipped model and
YuNet from ../shared, detection and classification included), its frames decoded either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.media_factory import write_looped_clip  # noqa: E402
from fervid.settings import Settings, get_settings  # noqa: E402
from worker.media.decode import decode_planned  # noqa: E402
from worker.media.isolated import DecoderLimits, IsolatedDecode, probe_isolated  # noqa: E402
from worker.media.limits import MediaLimits  # noqa: E402
from worker.media.probe import probe  # noqa: E402
from worker.pipeline import build_analyzer  # noqa: E402

SAMPLE_FPS = 5.0
LIMITS = MediaLimits.from_settings(Settings.model_construct())
DECODER = DecoderLimits(Settings.model_construct().decode_memory_mb, 600.0)


def in_process(path: Path) -> int:
    _, plan = probe(path, SAMPLE_FPS, LIMITS)
    return sum(1 for _ in decode_planned(path, plan, [], LIMITS.max_pixels))


def isolated(path: Path) -> int:
    _, plan = probe_isolated(path, SAMPLE_FPS, LIMITS, DECODER)
    return sum(1 for _ in IsolatedDecode(path, plan, [], LIMITS.max_pixels, DECODER))


def best_s(run: Callable[[Path], int], path: Path, repeat: int) -> tuple[float, int]:
    times, frames = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        frames = run(path)
        times.append(time.perf_counter() - started)
    return min(times), frames  # other load on the machine only ever adds time


def make_media(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo, large = folder / "photo.jpg", folder / "40mp.jpg"
    Image.fromarray(rng.integers(0, 256, (3024, 4032, 3), dtype=np.uint8)).save(photo, quality=85)
    Image.fromarray(rng.integers(0, 256, (5000, 8000, 3), dtype=np.uint8)).save(large, quality=85)
    source = folder / "source.mp4"
    write_looped_clip(ROOT.parent / "shared" / "media" / "single_face.mp4", source, loops=1)
    video = write_looped_clip(source, folder / "1080p.mp4", loops=5, size=(1920, 1080))  # 72 frames x 5 = 12 s
    return {"photo 4032x3024": photo, "photo 8000x5000": large, "1080p, 12 s at 5 fps": video}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        media = make_media(Path(folder))
        isolated(media["photo 4032x3024"])  # the fork server starts once per worker process, not per job
        for name, path in media.items():
            report(name, best_s(in_process, path, args.repeat), best_s(isolated, path, args.repeat))
        end_to_end(media["1080p, 12 s at 5 fps"], args.repeat)


def report(name: str, here: tuple[float, int], apart: tuple[float, int]) -> None:
    (here_s, frames), (apart_s, _) = here, apart
    print(f"{name:24} {frames:3} frames: in process {here_s * 1000:7.0f} ms, in decoder processes "
          f"{apart_s * 1000:7.0f} ms (x{apart_s / here_s:.2f}, +{(apart_s - here_s) * 1000:.0f} ms)")


def end_to_end(video: Path, repeat: int) -> None:
    settings = get_settings()
    yunet = ROOT.parent / "shared" / "models" / "face_detection_yunet_2023mar.onnx"
    if settings.detector_path is None and yunet.is_file():
        settings = settings.model_copy(update={"detector_path": yunet})
    analyzer = build_analyzer(settings)
    _, plan = probe(video, SAMPLE_FPS, LIMITS)
    analyzer.analyze(decode_planned(video, plan[:2], [], LIMITS.max_pixels))  # warm-up: first inference allocates

    def here(path: Path) -> int:
        return len(analyzer.analyze(decode_planned(path, plan, [], LIMITS.max_pixels)))

    def apart(path: Path) -> int:
        return len(analyzer.analyze(IsolatedDecode(path, plan, [], LIMITS.max_pixels, DECODER)))

    report(f"end to end ({analyzer.detector.name})", best_s(here, video, repeat), best_s(apart, video, repeat))


if __name__ == "__main__":
    main()
