"""Probing and decoding real files: containers, seeking, rotation, and every kind of bad input."""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image
from sqlalchemy.dialects import sqlite

from bench.media_factory import (
    HEIGHT,
    WIDTH,
    mdat_range,
    read_index,
    write_animation,
    write_audio,
    write_joined_recordings,
    write_png_bomb,
    write_still,
    write_video,
)
from fervid.errors import DECODE_ERROR, EMPTY_MEDIA, MEDIA_TOO_LARGE, UNSUPPORTED_MEDIA, MediaError
from fervid.sampling import PlannedFrame, plan_from_json, plan_to_json
from fervid.settings import Settings
from fervid.tables import PlanColumn
from worker.media.decode import REORDER_DEPTH, decode_planned
from worker.media.limits import MediaLimits
from worker.media.plan import split_plan
from worker.media.probe import probe

# The limits the settings default to, whatever the developer's environment says.
LIMITS = MediaLimits.from_settings(Settings.model_construct())


def decode_all(path: Path, plan: list[PlannedFrame]) -> tuple[list[tuple[PlannedFrame, np.ndarray]], list[str]]:
    warnings: list[str] = []
    return list(decode_planned(path, plan, warnings, LIMITS.max_pixels)), warnings


def seeks_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(record.name == "worker.media.decode" and "seek" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(("name", "codec", "pix_fmt"), [
    ("clip.mp4", "libx264", "yuv420p"),
    ("clip.mkv", "libx264", "yuv420p"),
    ("clip.webm", "libvpx-vp9", "yuv420p"),
    ("clip.avi", "mpeg4", "yuv420p"),
    ("clip.mov", "mjpeg", "yuvj420p"),
    ("clip.ts", "libx264", "yuv420p"),
    ("clip.gif", "gif", "rgb8"),
])
def test_every_planned_frame_decodes_to_its_own_pixels(tmp_path: Path, name: str, codec: str, pix_fmt: str) -> None:
    # given a 2 s clip whose frames show their index, in one of several containers and codecs
    clip = write_video(tmp_path / name, frame_count=48, codec=codec, pix_fmt=pix_fmt)
    info, plan = probe(clip, 5, LIMITS)
    # when the plan is decoded
    frames, warnings = decode_all(clip, plan)
    # then each planned frame comes once, in order, upright BGR, and shows the index it was planned as
    assert info.kind == "video" and info.frame_count == 48 and len(plan) == 10
    assert [planned for planned, _ in frames] == plan
    assert all(image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8 for _, image in frames)
    assert [read_index(image) for _, image in frames] == [f.frame_index for f in plan]
    assert warnings == []


@pytest.mark.parametrize("name", ["clip.mp4", "joined.ts"])
def test_decoding_lets_go_of_each_frame_once_it_is_yielded(tmp_path: Path, name: str) -> None:
    # given 96 frames, every one planned (timed, and timed by order)
    clip = (write_video(tmp_path / name, frame_count=96) if name == "clip.mp4"
            else write_joined_recordings(tmp_path / name, parts=2, frame_count=48))
    _, plan = probe(clip, 24, LIMITS)
    # when they are decoded, each image dropped as it comes (the garbage collector kept out of it, once it has
    # collected what earlier tests left: only this decoder's frames are counted)
    gc.collect()
    live: list[int] = []
    gc.disable()
    try:
        before = frames_alive()
        for _ in decode_planned(clip, plan, [], LIMITS.max_pixels):
            live.append(frames_alive() - before)
    finally:
        gc.enable()
    # then the decoder holds a few frames at any time, not every frame it gave out (each with its pixels and its
    # pixel converter's threads): those it holds back to reorder, and what its one thread's last call returns
    assert len(live) == 96 and max(live) <= 2 * REORDER_DEPTH


def frames_alive() -> int:
    return sum(isinstance(thing, av.VideoFrame) for thing in gc.get_objects())


def test_a_raw_stream_without_timestamps_is_planned_by_its_frame_rate(tmp_path: Path) -> None:
    # given a raw H.264 elementary stream (no container, no timestamps; FFmpeg assumes 25 fps)
    clip = write_video(tmp_path / "clip.h264", frame_count=50)
    # when probed at 5 fps and decoded
    info, plan = probe(clip, 5, LIMITS)
    frames, warnings = decode_all(clip, plan)
    # then every fifth frame is taken and decoded in order
    assert info.frame_count == 50 and info.fps == 25.0
    assert [f.frame_index for f in plan] == list(range(0, 50, 5))
    assert [read_index(image) for _, image in frames] == [f.frame_index for f in plan]
    assert warnings == []


@pytest.mark.parametrize(("name", "gop", "seeks"), [("clip.mp4", 6, True), ("clip.mp4", 250, False),
                                                    ("clip.ts", 6, True)])
def test_segments_decode_the_same_frames_as_the_whole_plan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, gop: int, seeks: bool
) -> None:
    # given 10 s at 24 fps sampled once a second; keyframes every 6 frames (gaps seek) or only the first;
    # MPEG-TS has no keyframe index, so its seeks land by timestamp search
    clip = write_video(tmp_path / name, frame_count=240, gop=gop)
    _, plan = probe(clip, 1, LIMITS)
    # when decoded whole, and segment by segment
    with caplog.at_level(logging.DEBUG, logger="worker.media.decode"):
        whole, _ = decode_all(clip, plan)
        segments = split_plan(plan, 3000.0)
        parts = [frame for segment in segments for frame in decode_all(clip, segment)[0]]
    # then both give the same planned frames with the same pixels, and those are the planned frames
    assert len(segments) == 4
    assert [p for p, _ in parts] == [p for p, _ in whole] == plan
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(whole, parts, strict=True))
    assert [read_index(image) for _, image in parts] == list(range(0, 240, 24))
    # and short groups of pictures are skipped by seeking, a single long one is decoded through
    assert (seeks_logged(caplog) > 0) is seeks


def test_recordings_joined_end_to_end_play_in_order(tmp_path: Path) -> None:
    # given three MPEG-TS recordings joined with `cat`: each restarts its timestamps
    clip = write_joined_recordings(tmp_path / "joined.ts", parts=3, frame_count=48)
    # when probed at 4 fps and decoded whole, and from its middle on
    info, plan = probe(clip, 4, LIMITS)
    whole, warnings = decode_all(clip, plan)
    tail, _ = decode_all(clip, plan[10:])
    # then all 6 s play once, in order, timed by the frame rate (sorting the timestamps would interleave them)
    assert (info.frame_count, info.duration_ms, info.fps) == (144, 6000.0, 24.0)
    assert [read_index(image) for _, image in whole] == [f.frame_index for f in plan] == list(range(0, 144, 6))
    assert [f.timestamp_ms for f in plan] == [250.0 * k for k in range(24)]
    assert [p for p, _ in tail] == plan[10:] and all(
        np.array_equal(a, b) for (_, a), (_, b) in zip(whole[10:], tail, strict=True))
    # and the job says why its timeline does not follow the file's timestamps
    assert len(warnings) == 1 and "timestamps repeat or run backwards" in warnings[0]


@pytest.mark.parametrize(("name", "restarts"), [("joined.ts", True), ("clip.h264", True), ("clip.hevc", False)])
def test_media_timed_by_order_splits_into_segments_that_decode_the_same_frames(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, restarts: bool) -> None:
    # given media timed by order: recordings joined end to end (timestamps restart), a raw H.264 stream (no
    # timestamps, IDR keyframes) and a raw HEVC one whose keyframes open groups of pictures (x265's CRA)
    clip = (write_joined_recordings(tmp_path / name, parts=3, frame_count=48) if name == "joined.ts"
            else write_video(tmp_path / name, frame_count=144, codec="libx265" if name == "clip.hevc" else "libx264"))
    _, plan = probe(clip, 4, LIMITS)
    # when split into 1 s segments and each is decoded on its own
    segments = split_plan(plan, 1000.0)
    whole, _ = decode_all(clip, plan)
    with caplog.at_level(logging.INFO, logger="worker.media.decode"):
        parts = [frame for segment in segments for frame in decode_all(clip, segment)[0]]
    # then the plan is cut like timed media's, and the segments give the planned frames with the same pixels
    assert plan[0].by_order and len(segments) == 6
    assert [p for p, _ in parts] == [p for p, _ in whole] == plan
    assert [read_index(image) for _, image in parts] == [f.frame_index for f in plan]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(whole, parts, strict=True))
    # and later segments start at the keyframe before their first frame, read from its place in the file, where the
    # stream allows it; an open group of pictures is decoded from the first frame instead
    assert all(segment[0].keyframe_pos > 0 for segment in segments[1:]) is restarts
    assert not any("cannot start" in record.getMessage() for record in caplog.records)


def test_a_restart_point_that_is_not_one_falls_back_to_the_first_frame(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given a segment of joined recordings whose keyframe offset is wrong (it points into another packet)
    clip = write_joined_recordings(tmp_path / "joined.ts", parts=3, frame_count=48)
    _, plan = probe(clip, 4, LIMITS)
    tail = [replace(frame, keyframe_pos=frame.keyframe_pos + 188) for frame in plan[10:]]
    # when it is decoded
    with caplog.at_level(logging.INFO, logger="worker.media.decode"):
        frames, _ = decode_all(clip, tail)
    # then the decoder notices and decodes from the first frame: the planned frames still come out exact
    assert [read_index(image) for _, image in frames] == [f.frame_index for f in tail]
    assert any("cannot start" in record.getMessage() for record in caplog.records)


def test_a_plan_survives_its_trip_through_the_database(tmp_path: Path) -> None:
    # given plans timed by timestamps and by order
    timed = probe(write_video(tmp_path / "clip.mp4", frame_count=24), 5, LIMITS)[1]
    ordered = probe(write_joined_recordings(tmp_path / "joined.ts", parts=2, frame_count=24), 5, LIMITS)[1]
    # when stored in the segments.plan column and read back, also as rows written before `by_order` or
    # `keyframe_pos` existed, and sent to a decoder process and back
    # then they come back unchanged
    assert stored_and_read(timed) == timed
    assert stored_and_read(ordered) == ordered
    assert all(frame.by_order for frame in ordered) and not any(frame.by_order for frame in timed)
    assert any(frame.keyframe_pos > 0 for frame in ordered)
    assert stored_and_read(timed, fields=4) == timed
    assert stored_and_read(timed, fields=5) == timed
    assert plan_from_json(json.loads(json.dumps(plan_to_json(ordered)))) == ordered


def stored_and_read(plan: list[PlannedFrame], fields: int = 6) -> list[PlannedFrame]:
    """A plan through the segments.plan column's JSON, each frame cut to its first `fields` values as stored."""
    column, dialect = PlanColumn(), sqlite.dialect()
    stored = json.loads(json.dumps(column.process_bind_param(plan, dialect)))
    read = column.process_result_value([row[:fields] for row in stored], dialect)
    assert read is not None
    return read


def test_the_last_frame_of_an_unindexed_stream_is_found_by_seeking_earlier(tmp_path: Path) -> None:
    # given an MPEG-TS clip (no keyframe index) and a segment holding only its last sampled frame
    clip = write_video(tmp_path / "clip.ts", frame_count=48, gop=12)
    _, plan = probe(clip, 5, LIMITS)
    # when only that segment is decoded (a seek to its keyframe lands past every keyframe)
    frames, warnings = decode_all(clip, plan[-1:])
    # then the frame is still found
    assert [(p.frame_index, read_index(image)) for p, image in frames] == [(44, 44)] and warnings == []


def test_shared_clip_segments_match_the_whole_decode(shared_dir: Path) -> None:
    # given a real HEVC clip from a phone, with B-frames and several keyframes
    clip = shared_dir / "media" / "face_noface.mov"
    info, plan = probe(clip, 10, LIMITS)
    # when decoded whole and in 1 s segments
    whole, warnings = decode_all(clip, plan)
    parts = [frame for segment in split_plan(plan, 1000.0) for frame in decode_all(clip, segment)[0]]
    # then the same frames come out with the same pixels
    assert (info.width, info.height) == (960, 540) and warnings == []
    assert [p for p, _ in parts] == [p for p, _ in whole] == plan
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(whole, parts, strict=True))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_upright(tmp_path: Path, rotation: int) -> None:
    # given frames stored turned, with a display matrix telling viewers to turn them back `rotation` clockwise
    clip = write_video(tmp_path / "rotated.mp4", frame_count=24, rotation_cw=rotation)
    # when probed and decoded
    info, plan = probe(clip, 5, LIMITS)
    frames, _ = decode_all(clip, plan)
    # then the reported size and the pixels are what a viewer sees
    assert (info.width, info.height, info.rotation) == (WIDTH, HEIGHT, rotation)
    assert [image.shape for _, image in frames] == [(HEIGHT, WIDTH, 3)] * len(plan)
    assert [read_index(image) for _, image in frames] == [f.frame_index for f in plan]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_mirrored_video_comes_out_as_a_viewer_sees_it(tmp_path: Path, rotation: int) -> None:
    # given frames stored mirrored (and turned), with a display matrix that mirrors them back (and turns them)
    clip = write_video(tmp_path / "mirrored.mp4", frame_count=24, rotation_cw=rotation, mirrored=True)
    # when probed and decoded
    info, plan = probe(clip, 5, LIMITS)
    frames, _ = decode_all(clip, plan)
    # then the pixels read the right way round (a mirrored or upside-down index reads as another number)
    assert (info.width, info.height, info.rotation, info.mirrored) == (WIDTH, HEIGHT, rotation, True)
    assert [image.shape for _, image in frames] == [(HEIGHT, WIDTH, 3)] * len(plan)
    assert [read_index(image) for _, image in frames] == [f.frame_index for f in plan]


@pytest.mark.parametrize(("name", "pixel_aspect", "display_size"), [
    ("wide.mp4", Fraction(2), (WIDTH, HEIGHT)),  # stored 80 wide: the width is stretched
    ("tall.mkv", Fraction(2, 3), (240, 144)),  # stored 240 wide: the height is stretched, no detail lost
])
def test_anamorphic_video_is_decoded_to_square_pixels(tmp_path: Path, name: str, pixel_aspect: Fraction,
                                                      display_size: tuple[int, int]) -> None:
    # given frames stored squeezed, with pixels that a player stretches back by `pixel_aspect` (DV, HDV, DVD)
    clip = write_video(tmp_path / name, frame_count=24, pixel_aspect=pixel_aspect)
    # when probed and decoded
    info, plan = probe(clip, 5, LIMITS)
    frames, _ = decode_all(clip, plan)
    # then sizes and pixels are those of the picture as displayed (faces keep their proportions)
    assert (info.width, info.height) == display_size
    assert [image.shape[1::-1] for _, image in frames] == [display_size] * len(plan)
    resized = [cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for _, image in frames]
    assert [read_index(image) for image in resized] == [f.frame_index for f in plan]


def test_interlaced_video_is_analysed_one_field_at_a_time(tmp_path: Path) -> None:
    # given interlaced frames whose two fields show different moments (a moving scene, combed when woven)
    clip = write_video(tmp_path / "interlaced.mkv", frame_count=24, interlaced=True)
    # when probed and decoded
    info, plan = probe(clip, 5, LIMITS)
    frames, _ = decode_all(clip, plan)
    # then each image is one moment at full size: the top field, which carries the index
    assert [image.shape for _, image in frames] == [(HEIGHT, WIDTH, 3)] * len(plan)
    assert [read_index(image) for _, image in frames] == [f.frame_index for f in plan]


@pytest.mark.parametrize(("orientation", "rotation"), [(3, 180), (6, 90), (8, 270)])
def test_jpeg_exif_orientation_is_applied(tmp_path: Path, orientation: int, rotation: int) -> None:
    # given a JPEG stored turned, with the EXIF orientation that turns it upright
    still = write_still(tmp_path / "photo.jpg", exif_orientation=orientation)
    # when probed and decoded
    info, plan = probe(still, 1, LIMITS)
    frames, _ = decode_all(still, plan)
    # then it is upright
    assert (info.kind, info.width, info.height, info.rotation) == ("image", WIDTH, HEIGHT, rotation)
    assert frames[0][1].shape == (HEIGHT, WIDTH, 3) and read_index(frames[0][1]) == 7


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_an_iphone_style_heic_photo_is_one_upright_image(tmp_path: Path, orientation: int) -> None:
    # given a HEIC photo (HEVC in a HEIF container, phones' default) stored turned, with the turn as a property
    still = write_still(tmp_path / "photo.heic", exif_orientation=orientation)
    # when probed and decoded
    info, plan = probe(still, 5, LIMITS)
    frames, _ = decode_all(still, plan)
    # then it is a photo, not a one-frame video, and it comes out upright
    assert (info.kind, info.fps, info.width, info.height) == ("image", None, WIDTH, HEIGHT)
    assert frames[0][1].shape == (HEIGHT, WIDTH, 3) and read_index(frames[0][1]) == 7


def test_an_animated_webp_is_a_video_timed_by_its_frame_durations(tmp_path: Path) -> None:
    # given an animated WebP (FFmpeg has no decoder for it) of 12 frames lasting 100 ms, then 6 lasting 200 ms
    animation = write_animation(tmp_path / "sticker.webp", [100] * 12 + [200] * 6)
    # when probed at 2 fps and decoded
    info, plan = probe(animation, 2, LIMITS)
    frames, warnings = decode_all(animation, plan)
    # then it is a 2.4 s video and each sample is the frame showing at 0, 0.5, 1.0, ... s
    assert (info.kind, info.frame_count, info.duration_ms, info.width, info.height) == ("video", 18, 2400.0,
                                                                                        WIDTH, HEIGHT)
    assert [p.frame_index for p in plan] == [0, 5, 10, 14, 16]  # the first frame at or after k / 2 s
    assert [read_index(image) for _, image in frames] == [0, 5, 10, 14, 16] and warnings == []


def test_a_multi_picture_jpeg_is_a_photo_not_a_video(tmp_path: Path) -> None:
    # given a phone-style MPO JPEG (a primary image plus a second picture) with an EXIF turn
    from PIL import ExifTags, Image

    still = write_still(tmp_path / "plain.jpg", exif_orientation=6)
    with Image.open(still) as plain:
        primary, exif = plain.copy(), plain.getexif()
    mpo = tmp_path / "photo.jpg"
    primary.save(mpo, format="MPO", save_all=True, append_images=[primary], exif=exif, quality=95)
    assert exif[ExifTags.Base.Orientation] == 6
    # when probed and decoded
    info, plan = probe(mpo, 5, LIMITS)
    frames, _ = decode_all(mpo, plan)
    # then it is one upright image, as for a plain JPEG
    assert (info.kind, info.fps, info.duration_ms, info.width, info.height) == ("image", None, 0.0, WIDTH, HEIGHT)
    assert len(frames) == 1 and read_index(frames[0][1]) == 7


DEEP_GREYS = [  # (file name, the pixels written, the 8-bit grey they stand for): about 46 % grey each
    ("grey16.png", np.full((HEIGHT, WIDTH), 30000, dtype=np.uint16), 30000 >> 8),
    ("grey16.tif", np.full((HEIGHT, WIDTH), 30000, dtype=np.uint16), 30000 >> 8),
    ("float01.tif", np.full((HEIGHT, WIDTH), 0.46, dtype=np.float32), round(0.46 * 255)),
    ("float255.tif", np.full((HEIGHT, WIDTH), 117.0, dtype=np.float32), 117),
    ("int32.tif", np.full((HEIGHT, WIDTH), 30000, dtype=np.int32), round(30000 * 255 / 65535)),
]


@pytest.mark.parametrize(("name", "pixels", "grey"), DEEP_GREYS, ids=[name for name, _, _ in DEEP_GREYS])
def test_a_grey_image_deeper_than_8_bits_keeps_its_tones(name: str, pixels: np.ndarray, grey: int,
                                                          tmp_path: Path) -> None:
    # given a 16-bit, float or 32-bit integer greyscale image, mid-grey
    from PIL import Image

    still = tmp_path / name
    Image.fromarray(pixels).save(still)
    # when probed and decoded
    info, plan = probe(still, 5, LIMITS)
    frames, _ = decode_all(still, plan)
    # then the frame is that grey, not clipped to white or black
    assert info.kind == "image" and frames[0][1].shape == (HEIGHT, WIDTH, 3)
    assert np.all(frames[0][1] == grey)


def test_shared_still_decodes_as_one_bgr_frame(shared_dir: Path) -> None:
    # given a real JPEG
    still = shared_dir / "media" / "messi5.jpg"
    # when probed and decoded
    info, plan = probe(still, 5, LIMITS)
    frames, _ = decode_all(still, plan)
    # then one frame of its size comes out, in BGR order (the same pixels as OpenCV reads)
    import cv2

    assert (info.kind, info.width, info.height, info.frame_count) == ("image", 548, 342, 1)
    assert len(frames) == 1 and np.array_equal(frames[0][1], cv2.imread(str(still)))


def expect_media_error(path: Path, code: str, limits: MediaLimits = LIMITS) -> MediaError:
    with pytest.raises(MediaError) as caught:
        probe(path, 5, limits)
    assert caught.value.code == code, caught.value.message
    assert len(caught.value.message) > 10
    return caught.value


def test_a_zero_byte_file_is_empty(tmp_path: Path) -> None:
    # given / when / then
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "0 bytes" in expect_media_error(empty, EMPTY_MEDIA).message


def test_random_bytes_are_unsupported(tmp_path: Path) -> None:
    # given noise named like a video
    noise = tmp_path / "noise.mov"
    noise.write_bytes(np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    # when / then
    expect_media_error(noise, UNSUPPORTED_MEDIA)


def test_a_text_file_is_unsupported(tmp_path: Path) -> None:
    # given text named like a video
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    # when / then
    expect_media_error(text, UNSUPPORTED_MEDIA)


def test_a_vector_image_is_unsupported_and_says_so(tmp_path: Path) -> None:
    # given an SVG drawing (FFmpeg opens it as a picture stream it cannot decode)
    drawing = tmp_path / "face.svg"
    drawing.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><circle r="40"/></svg>')
    # when / then
    assert "SVG" in expect_media_error(drawing, UNSUPPORTED_MEDIA).message


def test_an_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    # given an AAC track in an MP4 container
    audio = write_audio(tmp_path / "voice.m4a")
    # when / then
    assert "no video stream" in expect_media_error(audio, UNSUPPORTED_MEDIA).message


def test_an_mp4_cut_before_its_index_is_a_decode_error(tmp_path: Path) -> None:
    # given an MP4 whose index (moov, written last) is lost by cutting the file in the middle
    clip = write_video(tmp_path / "clip.mp4")
    data = clip.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    # when / then
    expect_media_error(truncated, DECODE_ERROR)


def test_an_mp4_cut_after_its_index_keeps_the_frames_that_are_there(tmp_path: Path) -> None:
    # given an MP4 with its index first (faststart), cut at two thirds
    clip = write_video(tmp_path / "clip.mp4", faststart=True)
    data = clip.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    # when every frame is planned and decoded
    _, plan = probe(truncated, 24, LIMITS)
    frames, warnings = decode_all(truncated, plan)
    # then the frames present come out right, at most one warning names what was lost, and nothing raises
    assert 0 < len(frames) < 72 and len(warnings) <= 1
    assert [read_index(image) for _, image in frames] == [p.frame_index for p, _ in frames]
    assert [p.frame_index for p, _ in frames] == list(range(len(frames)))


@pytest.mark.parametrize("gop", [12, 250])
def test_damage_in_the_middle_keeps_the_frames_around_it_with_one_warning(tmp_path: Path, gop: int) -> None:
    # given a clip whose coded frames are overwritten with noise over the middle fifth of the media data
    # (with one keyframe only, the damaged decoder emits frames out of order: the intact ones must still come)
    clip = write_video(tmp_path / "clip.mp4", frame_count=72, gop=gop)
    start, end = mdat_range(clip)
    damage_start, damage_end = start + (end - start) * 2 // 5, start + (end - start) * 3 // 5
    with av.open(str(clip)) as container:
        packets = [(p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size]
    order = {pts: index for index, pts in enumerate(sorted(pts for pts, _, _ in packets))}
    intact_before = sorted(order[pts] for pts, pos, size in packets if pos + size <= damage_start)
    data = bytearray(clip.read_bytes())
    data[damage_start:damage_end] = np.random.default_rng(3).integers(0, 256, damage_end - damage_start,
                                                                      dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    # when every frame is planned and decoded, twice
    info, plan = probe(damaged, 24, LIMITS)
    frames, warnings = decode_all(damaged, plan)
    again, _ = decode_all(damaged, plan)
    # then the frames before the damage come out intact, decoding recovers at the next keyframe after it, and
    # one warning counts the lost frames; the second time gives the same frames, concealed damage included
    decoded = {p.frame_index: read_index(image) for p, image in frames}
    assert info.frame_count == 72 and intact_before
    assert all(decoded.get(index) == index for index in intact_before)
    assert gop == 250 or decoded.get(71) == 71
    assert len(frames) < len(plan) and len(warnings) == 1
    assert warnings[0].startswith(f"{len(plan) - len(frames)} of {len(plan)} ")
    assert [p for p, _ in again] == [p for p, _ in frames]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(again, frames, strict=True))


def test_a_video_none_of_whose_frames_decode_is_a_decode_error(tmp_path: Path) -> None:
    # given an MP4 whose container is intact but all coded frames are noise
    clip = write_video(tmp_path / "clip.mp4")
    start, end = mdat_range(clip)
    data = bytearray(clip.read_bytes())
    data[start:end] = np.random.default_rng(5).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    clip.write_bytes(bytes(data))
    # when / then
    expect_media_error(clip, DECODE_ERROR)


def test_a_png_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    # given a PNG of a few hundred bytes declaring 100000x100000 pixels
    bomb = write_png_bomb(tmp_path / "bomb.png")
    # when / then
    assert bomb.stat().st_size < 1000
    expect_media_error(bomb, MEDIA_TOO_LARGE)


def test_an_image_over_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    # given a 160x96 still (15360 pixels) and a 10000-pixel limit
    limits = replace(LIMITS, max_pixels=10000)
    still = write_still(tmp_path / "still.png")
    # when / then
    assert "160x96" in expect_media_error(still, MEDIA_TOO_LARGE, limits).message


def test_a_video_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    # given a 160x96 clip and a 10000-pixel limit (the decoder itself would refuse such frames: a decode error)
    limits = replace(LIMITS, max_pixels=10000)
    clip = write_video(tmp_path / "clip.mp4", frame_count=12)
    # when / then the header check answers first
    error = expect_media_error(clip, MEDIA_TOO_LARGE, limits)
    assert "160x96" in error.message and "FERVID_MAX_PIXELS" in error.message


def test_a_video_over_the_duration_limit_is_refused(tmp_path: Path) -> None:
    # given a 3 s clip and a 2 s limit
    limits = replace(LIMITS, max_duration_s=2)
    clip = write_video(tmp_path / "clip.mkv", frame_count=72)
    # when / then
    assert "FERVID_MAX_DURATION_S" in expect_media_error(clip, MEDIA_TOO_LARGE, limits).message


def test_a_video_with_more_frames_than_the_limit_is_refused(tmp_path: Path) -> None:
    # given a 72-frame clip and a 50-frame limit
    limits = replace(LIMITS, max_frames=50)
    clip = write_video(tmp_path / "clip.mp4", frame_count=72)
    # when / then
    assert "FERVID_MAX_FRAMES" in expect_media_error(clip, MEDIA_TOO_LARGE, limits).message


def test_decoding_bad_input_raises_only_media_errors(tmp_path: Path) -> None:
    # given noise, and a PNG whose pixel data is cut off after a valid header
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(11).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    png = write_still(tmp_path / "still.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:60])
    frame = PlannedFrame(frame_index=0, timestamp_ms=0.0, pts=0, keyframe_pts=0)
    # when / then the noise is unsupported, and the cut image probes but cannot be decoded
    with pytest.raises(MediaError) as caught:
        decode_all(noise, [frame])
    assert caught.value.code == UNSUPPORTED_MEDIA
    _, plan = probe(cut, 1, LIMITS)
    with pytest.raises(MediaError) as caught:
        decode_all(cut, plan)
    assert caught.value.code == DECODE_ERROR


def test_an_empty_plan_decodes_nothing(tmp_path: Path) -> None:
    # given a valid clip and no planned frames
    clip = write_video(tmp_path / "clip.mp4", frame_count=5)
    # when / then
    assert decode_all(clip, []) == ([], [])


def test_an_animation_over_the_decoded_pixel_budget_is_refused_before_its_frames_are_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given an animated WebP of 40 frames of 160x96 and a budget of 39 such frames
    animation = write_animation(tmp_path / "many.webp", [100] * 40)
    limits = replace(LIMITS, max_decoded_pixels=39 * 160 * 96)
    decoded: list[int] = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or original_load(self))
    # when it is probed, then it is refused media_too_large, naming the budget, and no frame was decoded
    error = expect_media_error(animation, MEDIA_TOO_LARGE, limits)
    assert "FERVID_MAX_DECODED_PIXELS" in error.message and "40 frames" in error.message
    assert decoded == []


def test_a_video_over_the_decoded_pixel_budget_is_refused_before_its_segments_are_decoded(tmp_path: Path) -> None:
    # given a 12-frame 160x96 clip and a budget of 11 such frames
    clip = write_video(tmp_path / "clip.mp4", frame_count=12)
    limits = replace(LIMITS, max_decoded_pixels=11 * 160 * 96)
    # when / then the probe refuses it
    assert "FERVID_MAX_DECODED_PIXELS" in expect_media_error(clip, MEDIA_TOO_LARGE, limits).message
