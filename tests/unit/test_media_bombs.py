"""The media-bomb corpus, made on the fly: files small on disk that declare far more work than they are worth, and
legitimate oddities that must still come out right. Each is refused with its code before the costly part, or decoded
exactly; none hangs, none raises anything but a MediaError."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bench.media_factory import (
    HEIGHT,
    WIDTH,
    read_index,
    write_animation,
    write_gif_bomb,
    write_joined_recordings,
    write_jpeg_scan_bomb,
    write_retimed_clip,
    write_still,
    write_tiff,
    write_video,
)
from fervid.errors import DECODE_ERROR, EMPTY_MEDIA, MEDIA_TOO_LARGE, UNSUPPORTED_MEDIA, MediaError
from fervid.sampling import PlannedFrame
from fervid.settings import Settings
from worker.media.decode import decode_planned
from worker.media.limits import MediaLimits
from worker.media.plan import split_plan
from worker.media.probe import probe
from worker.media.stills import MAX_JPEG_SCANS

LIMITS = MediaLimits.from_settings(Settings.model_construct())


def refused(path: Path, code: str, limits: MediaLimits = LIMITS) -> str:
    with pytest.raises(MediaError) as caught:
        probe(path, 5, limits)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def decoded(path: Path, plan: list[PlannedFrame]) -> tuple[list[int], list[str]]:
    warnings: list[str] = []
    return [read_index(image) for _, image in decode_planned(path, plan, warnings, LIMITS.max_pixels)], warnings


def test_a_progressive_jpeg_of_many_empty_scans_is_refused_before_its_pixels_are_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a 3 KB progressive JPEG declaring 2000x2000 pixels (within the pixel limit) in 300 scans without data:
    # each scan is one more pass of the decoder over every pixel
    bomb = write_jpeg_scan_bomb(tmp_path / "scans.jpg", side=2000, scans=300)
    loads: list[int] = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(1) or original_load(self))
    # when it is probed, and its one frame decoded (a segment re-checks what it opens)
    message = refused(bomb, MEDIA_TOO_LARGE)
    with pytest.raises(MediaError) as caught:
        decoded(bomb, [PlannedFrame(frame_index=0, timestamp_ms=0.0, pts=0, keyframe_pts=0)])
    # then both refuse it, naming the scans, and no pixel was decoded
    assert bomb.stat().st_size < 4000
    assert f"over {MAX_JPEG_SCANS} scans" in message and caught.value.code == MEDIA_TOO_LARGE
    assert loads == []


def test_an_ordinary_progressive_jpeg_is_decoded(tmp_path: Path) -> None:
    # given frame 7 as a progressive JPEG, as libjpeg writes it (10 scans)
    with Image.open(write_still(tmp_path / "still.jpg")) as still:
        still.save(tmp_path / "progressive.jpg", progressive=True, quality=95)
    # when probed and decoded
    info, plan = probe(tmp_path / "progressive.jpg", 5, LIMITS)
    # then it is the photo
    assert (info.kind, info.width, info.height) == ("image", WIDTH, HEIGHT)
    assert decoded(tmp_path / "progressive.jpg", plan) == ([7], [])


@pytest.mark.parametrize("name", ["scans.jpg", "screen.gif"])
def test_huge_declared_dimensions_are_refused_from_the_header(tmp_path: Path, name: str) -> None:
    # given a file of a few KB declaring billions of pixels: a progressive JPEG of 60000x60000 in 5000 scans, or a
    # GIF whose 65535x65535 logical screen holds a 1x1 frame
    bomb = (write_jpeg_scan_bomb(tmp_path / name, side=60_000, scans=5000) if name.endswith(".jpg")
            else write_gif_bomb(tmp_path / name))
    # when / then
    assert bomb.stat().st_size < 60_000
    assert "FERVID_MAX_PIXELS" in refused(bomb, MEDIA_TOO_LARGE)


@pytest.mark.parametrize("pages", [1, 3])
@pytest.mark.parametrize("sixteen_bit", [False, True])
def test_a_tiff_is_a_photo_of_its_first_page_at_any_depth(tmp_path: Path, pages: int, sixteen_bit: bool) -> None:
    # given frame 7 as a TIFF, 8 or 16 bits per channel, alone or followed by more pages (frames 8, 9)
    tiff = write_tiff(tmp_path / "scan.tif", pages=pages, sixteen_bit=sixteen_bit)
    # when probed and decoded
    info, plan = probe(tiff, 5, LIMITS)
    # then it is one photo (not a one-frame video), its first page with its tones kept
    assert (info.kind, info.fps, info.frame_count, info.width, info.height) == ("image", None, 1, WIDTH, HEIGHT)
    assert decoded(tiff, plan) == ([7], [])


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_an_animation_of_more_frames_than_the_limit_is_refused_before_decoding(tmp_path: Path, suffix: str) -> None:
    # given an animation of 60 frames and a 50-frame limit
    animation = write_animation((tmp_path / "many").with_suffix(suffix), [40] * 60)
    # when / then
    assert "FERVID_MAX_FRAMES" in refused(animation, MEDIA_TOO_LARGE, replace(LIMITS, max_frames=50))


def test_repeated_timestamps_are_timed_by_order_and_split_into_exact_segments(tmp_path: Path) -> None:
    # given a Matroska clip whose frames come in pairs sharing one timestamp
    clip = write_retimed_clip(write_video(tmp_path / "source.mp4", frame_count=96), tmp_path / "pairs.mkv")
    # when probed at 4 fps, split into 1 s segments and each decoded
    info, plan = probe(clip, 4, LIMITS)
    segments = split_plan(plan, 1000.0)
    parts = [decoded(clip, segment) for segment in segments]
    # then all 96 frames are there, timed by order at 24 fps, each sample the frame planned, with one warning
    assert (info.frame_count, info.duration_ms) == (96, 4000.0) and len(segments) == 4
    assert [index for indices, _ in parts for index in indices] == [f.frame_index for f in plan]
    assert [f.frame_index for f in plan] == list(range(0, 96, 6))
    assert all(len(warnings) == 1 and "timestamps repeat" in warnings[0] for _, warnings in parts)


def test_recordings_joined_end_to_end_are_split_into_segments_of_bounded_frames(tmp_path: Path) -> None:
    # given 10 recordings of 2 s joined with `cat` (each restarts its timestamps), sampled at 24 fps
    clip = write_joined_recordings(tmp_path / "joined.ts", parts=10, frame_count=48)
    _, plan = probe(clip, 24, LIMITS)
    # when split into 2 s segments
    segments = split_plan(plan, 2000.0)
    # then no segment holds more than 2 s of frames, and the last one decodes exactly from its own keyframe
    assert len(plan) == 480 and [len(segment) for segment in segments] == [48] * 10
    assert decoded(clip, segments[-1])[0] == list(range(432, 480))


@pytest.mark.parametrize("make", ["jpg", "progressive.jpg", "png", "tif", "gif", "webp", "ts", "mkv", "heic"])
@pytest.mark.parametrize("kept", [0.3, 0.6, 0.9])
def test_a_truncated_file_fails_with_a_media_code_or_keeps_the_frames_that_are_there(
        tmp_path: Path, make: str, kept: float) -> None:
    # given a file of one of many formats cut short
    source = tmp_path / f"source.{make}"
    if make in ("ts", "mkv"):
        write_video(source, frame_count=48)
    elif make in ("gif", "webp"):
        write_animation(source, [100] * 24)
    elif make == "tif":
        write_tiff(source, sixteen_bit=True)
    elif make == "progressive.jpg":
        with Image.open(write_still(tmp_path / "still.jpg")) as still:
            still.save(source, progressive=True, quality=95)
    else:
        write_still(source)
    data = source.read_bytes()
    cut = tmp_path / f"cut.{make}"
    cut.write_bytes(data[: int(len(data) * kept)])
    # when it is probed and decoded
    try:
        _, plan = probe(cut, 4, LIMITS)
        frames = [(planned.frame_index, read_index(image))
                  for planned, image in decode_planned(cut, plan, [], LIMITS.max_pixels)]
    except MediaError as error:
        # then it fails with a media code and a message saying what happened
        assert error.code in (DECODE_ERROR, EMPTY_MEDIA, UNSUPPORTED_MEDIA), error.message
        assert len(error.message) > 20
        return
    # or the frames that are there come out in order, each the planned one or (lost to the cut) the next decoded
    assert make in ("ts", "mkv", "gif") and frames
    planned = [f.frame_index for f in plan]
    following = dict(zip(planned, [*planned[1:], math.inf], strict=True))
    assert all(index <= shown < following[index] for index, shown in frames)
