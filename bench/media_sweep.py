"""Which codec / container / pixel-format combinations the media layer decodes frame-exactly.

    .venv/bin/python bench/media_sweep.py

Writes a 2 s clip of indexed frames (bench/media_factory.py) in each combination this machine's FFmpeg can encode,
probes it at 5 fps, decodes the plan and checks every sampled frame shows its own index. Prints one line each and
a count; exits 1 when a combination that could be written does not decode exactly.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.media_factory import read_index, write_video  # noqa: E402
from fervid.errors import MediaError  # noqa: E402
from fervid.settings import Settings  # noqa: E402
from worker.media.decode import decode_planned  # noqa: E402
from worker.media.limits import MediaLimits  # noqa: E402
from worker.media.probe import probe  # noqa: E402

SETTINGS = Settings()  # the limits FERVID_* sets

# (file name, encoder, pixel format): the container comes from the suffix.
COMBINATIONS = [
    ("h264.mp4", "libx264", "yuv420p"), ("h264.mov", "libx264", "yuv420p"), ("h264.m4v", "libx264", "yuv420p"),
    ("h264.3gp", "libx264", "yuv420p"), ("h264.nut", "libx264", "yuv420p"), ("h264.h264", "libx264", "yuv420p"),
    ("h264-444.mp4", "libx264", "yuv444p"), ("h264-10bit.mkv", "libx264", "yuv420p10le"),
    ("hevc.mp4", "libx265", "yuv420p"), ("hevc-10bit.mkv", "libx265", "yuv420p10le"),
    ("hevc.hevc", "libx265", "yuv420p"),
    ("av1.mp4", "libsvtav1", "yuv420p"), ("av1.webm", "libsvtav1", "yuv420p"),
    ("vp8.webm", "libvpx", "yuv420p"), ("vp9.mkv", "libvpx-vp9", "yuv420p"),
    ("prores.mov", "prores_ks", "yuv422p10le"), ("ffv1.mkv", "ffv1", "yuv444p"),
    ("mpeg2.mpg", "mpeg2video", "yuv420p"), ("mpeg2.ts", "mpeg2video", "yuv420p"),
    ("mpeg1.mpg", "mpeg1video", "yuv420p"),
    ("flv.flv", "flv", "yuv420p"), ("wmv2.asf", "wmv2", "yuv420p"), ("mjpeg.avi", "mjpeg", "yuvj422p"),
    ("raw.avi", "rawvideo", "bgr24"), ("png.mov", "png", "rgb24"), ("qtrle.mov", "qtrle", "rgb24"),
    ("huffyuv.avi", "huffyuv", "yuv422p"), ("utvideo.avi", "utvideo", "yuv420p"), ("apng.apng", "apng", "rgba"),
    ("webp-animated.webp", "libwebp_anim", "yuva420p"),
]


def main() -> int:
    exact = failed = skipped = 0
    with tempfile.TemporaryDirectory(prefix="fervid-sweep-") as work:
        for name, codec, pix_fmt in COMBINATIONS:
            path = Path(work) / name
            try:
                write_video(path, frame_count=48, codec=codec, pix_fmt=pix_fmt)
            except Exception as error:  # this FFmpeg build lacks the encoder or muxer
                print(f"{name:<22} skipped: cannot write ({error})")
                skipped += 1
                continue
            try:
                info, plan = probe(path, 5, MediaLimits.from_settings(SETTINGS))
                warnings: list[str] = []
                frames = list(decode_planned(path, plan, warnings, SETTINGS.max_pixels))
            except MediaError as error:
                print(f"{name:<22} FAILED: {error.code}: {error}")
                failed += 1
                continue
            ok = [read_index(image) for _, image in frames] == [f.frame_index for f in plan] and not warnings
            print(f"{name:<22} {info.width}x{info.height}, {info.frame_count} frames, {len(frames)}/{len(plan)} "
                  f"sampled frames {'exact' if ok else 'WRONG'}{', timed by order' if plan[0].by_order else ''}"
                  f"{''.join(f'; warning: {warning}' for warning in warnings)}")
            exact, failed = exact + ok, failed + (not ok)
    print(f"\n{exact} exact, {failed} failed, {skipped} could not be written here")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
