"""The viewer's frame stills as workers render them (worker/still_render.py): the analysed frame itself, upright and
mirrored as the worker analysed it, decoded in a decoder process under its limits."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.media_factory import HEIGHT, WIDTH, read_index, write_joined_recordings, write_still, write_video
from fervid.errors import MEDIA_TOO_LARGE, MediaError
from fervid.sampling import PlannedFrame
from fervid.settings import Settings
from worker.media.decode import decode_planned
from worker.media.isolated import DecoderLimits
from worker.media.limits import MediaLimits
from worker.media.probe import probe
from worker.still_render import still_jpeg

DECODER = DecoderLimits(memory_mb=1024, cpu_s=60.0)
MAX_PIXELS = Settings.model_construct().max_pixels


def _bgr(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[:, :, ::-1]


def _plan(path: Path, fps: float = 5.0) -> list[PlannedFrame]:
    return probe(path, fps, MediaLimits.from_settings(Settings.model_construct()))[1]


@pytest.mark.parametrize(("rotation_cw", "mirrored", "pixel_aspect"),
                         [(0, False, Fraction(1)), (90, False, Fraction(1)), (270, False, Fraction(1)),
                          (180, False, Fraction(1)), (0, False, Fraction(2)), (0, True, Fraction(1)),
                          (90, True, Fraction(1))])
def test_each_sampled_frame_is_the_frame_the_worker_analysed_upright_at_the_displayed_size(
    tmp_path: Path, rotation_cw: int, mirrored: bool, pixel_aspect: Fraction
) -> None:
    # given a clip of indexed frames stored turned, mirrored or squeezed, and the worker's plan of its sampled frames
    clip = write_video(tmp_path / "clip.mp4", frame_count=72, fps=24, gop=12, rotation_cw=rotation_cw,
                       mirrored=mirrored, pixel_aspect=pixel_aspect)
    plan = _plan(clip)
    analysed = {planned.frame_index: image for planned, image in decode_planned(clip, plan, [], MAX_PIXELS)}
    # when every sampled frame is rendered out of order (each one a seek)
    stills = {planned.frame_index: _bgr(still_jpeg(clip, planned, MAX_PIXELS, DECODER)) for planned in plan[::-1]}
    # then each is its own frame, with the very pixels the analysis saw (JPEG aside), at the boxes' size
    for index, image in stills.items():
        assert image.shape[:2] == (HEIGHT, WIDTH)
        assert read_index(image) == index
        assert np.abs(image.astype(int) - analysed[index].astype(int)).mean() < 3.0


def test_a_late_frame_of_a_stream_timed_by_order_starts_at_its_restart_point(tmp_path: Path) -> None:
    # given recordings joined end to end (timestamps repeat: timed by order), and the plan's last frame
    joined = write_joined_recordings(tmp_path / "joined.ts", parts=3, frame_count=24)
    plan = _plan(joined)
    last = plan[-1]
    assert last.by_order and last.keyframe_pts > 0 and last.keyframe_pos > 0
    # when its still is rendered
    image = _bgr(still_jpeg(joined, last, MAX_PIXELS, DECODER))
    # then it is that frame
    assert read_index(image) == last.frame_index


def test_an_image_is_turned_by_its_exif_orientation(tmp_path: Path) -> None:
    # given frame 7 as a JPEG stored sideways, with an EXIF orientation saying so
    photo = write_still(tmp_path / "photo.jpg", exif_orientation=6)
    # when
    image = _bgr(still_jpeg(photo, _plan(photo)[0], MAX_PIXELS, DECODER))
    # then it is upright
    assert image.shape[:2] == (HEIGHT, WIDTH) and read_index(image) == 7


@pytest.mark.parametrize(("name", "pixels"), [("grey16.png", np.full((48, 64), 30000, np.uint16)),
                                               ("float01.tif", np.full((48, 64), 0.46, np.float32))])
def test_a_grey_image_deeper_than_8_bits_is_the_grey_the_worker_analysed(name: str, pixels: np.ndarray,
                                                                        tmp_path: Path) -> None:
    # given a mid-grey 16-bit PNG and a float TIFF in [0, 1]
    still = tmp_path / name
    Image.fromarray(pixels).save(still)
    # when its still is rendered
    image = _bgr(still_jpeg(still, _plan(still)[0], MAX_PIXELS, DECODER))
    # then it is the grey the worker decoded (JPEG rounding aside), not white or black
    assert np.abs(image.astype(int) - 117).max() <= 2


def test_a_still_over_the_decoders_memory_limit_fails_with_its_code(tmp_path: Path) -> None:
    # given a 4000x3000 photo, and a decoder allowed 64 MB beyond what it holds at start
    photo = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (3000, 4000, 3), np.uint8)).save(photo)
    # when its still is rendered under that limit
    with pytest.raises(MediaError) as refused:
        still_jpeg(photo, _plan(photo)[0], MAX_PIXELS, DecoderLimits(memory_mb=64, cpu_s=60.0))
    # then the decoder process, not the worker, ran out, and said so
    assert refused.value.code == MEDIA_TOO_LARGE
