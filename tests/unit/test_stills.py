"""The viewer's frame stills (api/stills.py): the sampled frame itself, upright as the worker analysed it."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api import stills as still_decoding
from api.stills import frame_jpeg
from bench.media_factory import HEIGHT, WIDTH, read_index, write_still, write_video
from fervid.errors import TooManyRequests
from fervid.settings import Settings
from fervid.tables import PlanRow
from worker.media.decode import decode_planned
from worker.media.limits import MediaLimits
from worker.media.plan import PlannedFrame
from worker.media.probe import probe


def _bgr(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[:, :, ::-1]


def _row(planned: PlannedFrame) -> PlanRow:
    return PlanRow(planned.frame_index, planned.timestamp_ms, planned.pts, planned.keyframe_pts, planned.by_order)


@pytest.mark.parametrize(("rotation_cw", "pixel_aspect"), [(0, Fraction(1)), (90, Fraction(1)), (270, Fraction(1)),
                                                           (180, Fraction(1)), (0, Fraction(2))])
def test_each_sampled_frame_comes_back_upright_at_the_displayed_size(
    tmp_path: Path, rotation_cw: int, pixel_aspect: Fraction
) -> None:
    # given a clip of indexed frames stored turned (or squeezed), and the worker's plan of its sampled frames
    clip = write_video(tmp_path / "clip.mp4", frame_count=72, fps=24, gop=12, rotation_cw=rotation_cw,
                       pixel_aspect=pixel_aspect)
    info, plan = probe(clip, 5.0, MediaLimits.from_settings(Settings.model_construct()))
    # when every sampled frame is asked for out of order (each one a seek)
    stills = {planned.frame_index: _bgr(frame_jpeg(clip, "video", _row(planned))) for planned in plan[::-1]}
    # then each is its own frame, upright, at the size the timeline's boxes are measured in
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    for index, image in stills.items():
        assert image.shape[:2] == (HEIGHT, WIDTH)
        assert read_index(image) == index
        assert image[-4:, :, 1].mean() > image[:4, 20:, 1].mean() - 50  # the green half is at the bottom


def test_frames_timed_by_order_are_counted_from_the_start(tmp_path: Path) -> None:
    # given a plan row timed by order (no usable timestamps): pts is the frame's position in output order
    clip = write_video(tmp_path / "clip.mp4", frame_count=30, fps=24, gop=12)
    # when / then
    assert read_index(_bgr(frame_jpeg(clip, "video", PlanRow(17, 708.3, 17, 12, True)))) == 17


def test_an_image_is_turned_by_its_exif_orientation(tmp_path: Path) -> None:
    # given frame 7 as a JPEG stored sideways, with an EXIF orientation saying so
    photo = write_still(tmp_path / "photo.jpg", exif_orientation=6)
    # when
    image = _bgr(frame_jpeg(photo, "image", PlanRow(0, 0.0, 0, 0)))
    # then it is upright
    assert image.shape[:2] == (HEIGHT, WIDTH) and read_index(image) == 7


@pytest.mark.parametrize(("name", "pixels"), [("grey16.png", np.full((48, 64), 30000, np.uint16)),
                                               ("float01.tif", np.full((48, 64), 0.46, np.float32))])
def test_a_grey_image_deeper_than_8_bits_is_the_grey_the_worker_analysed(name: str, pixels: np.ndarray,
                                                                        tmp_path: Path) -> None:
    # given a mid-grey 16-bit PNG and a float TIFF in [0, 1]
    still = tmp_path / name
    Image.fromarray(pixels).save(still)
    # when the viewer asks for its still
    image = _bgr(frame_jpeg(still, "image", PlanRow(0, 0.0, 0, 0)))
    # then it is the grey the worker decoded (JPEG rounding aside), not white or black
    _, plan = probe(still, 5, MediaLimits.from_settings(Settings()))
    ((_, analysed),) = list(decode_planned(still, plan, [], Settings().max_pixels))
    assert abs(int(analysed[0, 0, 0]) - 117) <= 1
    assert np.abs(image.astype(int) - analysed.astype(int)).max() <= 2


def test_no_more_than_a_few_stills_decode_at_once_and_a_long_wait_is_answered_429(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a real clip, and its decodes watched (the real decoder runs, held 0.2 s longer) for how many overlap
    clip = write_video(tmp_path / "clip.mp4", frame_count=12)
    _, plan = probe(clip, 5, MediaLimits.from_settings(Settings()))
    real_decode, lock = still_decoding._decoded_jpeg, threading.Lock()
    running, most = 0, 0

    def watched(*args: object) -> bytes:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            jpeg = real_decode(*args)  # type: ignore[arg-type]
            time.sleep(0.2)
            return jpeg
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(still_decoding, "_decoded_jpeg", watched)
    # when 8 requests ask for stills at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        jpegs = list(pool.map(lambda _: frame_jpeg(clip, "video", _row(plan[0])), range(8)))
    # then each got its frame, and no more than CONCURRENT_DECODES were decoding at any moment
    assert all(read_index(_bgr(jpeg)) == 0 for jpeg in jpegs)
    assert most == still_decoding.CONCURRENT_DECODES
    # and with no time to wait, a request beyond them is refused 429 with a Retry-After
    monkeypatch.setattr(still_decoding, "WAIT_FOR_DECODE_S", 0.05)
    requests = still_decoding.CONCURRENT_DECODES + 1
    with ThreadPoolExecutor(max_workers=requests) as pool:
        outcomes = list(pool.map(lambda _: _still_or_error(clip, _row(plan[0])), range(requests)))
    refused = [outcome for outcome in outcomes if isinstance(outcome, TooManyRequests)]
    assert len(refused) >= 1 and refused[0].http_status == 429 and refused[0].retry_after_s == 1


def _still_or_error(clip: Path, row: PlanRow) -> bytes | TooManyRequests:
    try:
        return frame_jpeg(clip, "video", row)
    except TooManyRequests as error:
        return error
