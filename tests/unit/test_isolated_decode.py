"""Probing and decoding in a decoder process of their own: the same answers as in the worker's process, and past
the memory or the CPU seconds it is given, a clear media error instead of a worker taken down."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.media_factory import mdat_range, write_joined_recordings, write_jpeg_scan_bomb, write_video
from fervid.errors import DECODE_ERROR, MEDIA_TOO_LARGE, MediaError
from fervid.settings import Settings
from worker.media.decode import decode_planned
from worker.media.isolated import DecoderLimits, IsolatedDecode, probe_isolated
from worker.media.limits import MediaLimits
from worker.media.probe import probe
from worker.media.stills import MAX_JPEG_SCANS

LIMITS = MediaLimits.from_settings(Settings.model_construct())
ROOMY = DecoderLimits(memory_mb=1024, cpu_s=120)


def damaged_clip(path: Path) -> Path:
    """A clip with zeros over the middle fifth of its coded frames: some sampled frames are lost, with a warning."""
    clip = write_video(path, frame_count=72, gop=12)
    start, end = mdat_range(clip)
    damage = slice(start + (end - start) * 2 // 5, start + (end - start) * 3 // 5)
    data = bytearray(clip.read_bytes())
    data[damage] = bytes(damage.stop - damage.start)
    clip.write_bytes(bytes(data))
    return clip


@pytest.mark.parametrize("name", ["clip.mp4", "joined.ts", "damaged.mp4", "photo.png"])
def test_a_decoder_process_answers_as_the_worker_process_does(tmp_path: Path, name: str) -> None:
    # given media of several kinds: a clip, recordings joined end to end, a damaged clip, a photo
    if name == "clip.mp4":
        media = write_video(tmp_path / name, frame_count=48)
    elif name == "joined.ts":
        media = write_joined_recordings(tmp_path / name, parts=2, frame_count=24)
    elif name == "damaged.mp4":
        media = damaged_clip(tmp_path / name)
    else:
        media = tmp_path / name
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 160, 3), dtype=np.uint8)).save(media)
    # when probed and decoded in a decoder process, and in this one
    info, plan = probe_isolated(media, 10, LIMITS, ROOMY)
    isolated_warnings: list[str] = []
    isolated = list(IsolatedDecode(media, plan, isolated_warnings, LIMITS.max_pixels, ROOMY))
    here_warnings: list[str] = []
    here = list(decode_planned(media, plan, here_warnings, LIMITS.max_pixels))
    # then the plan, the frames (pixel for pixel) and the warnings are the same
    assert (info, plan) == probe(media, 10, LIMITS)
    assert [planned for planned, _ in isolated] == [planned for planned, _ in here] and isolated
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(isolated, here, strict=True))
    assert isolated_warnings == here_warnings
    assert bool(here_warnings) is (name in ("joined.ts", "damaged.mp4"))


def test_a_decode_past_its_memory_is_media_too_large(tmp_path: Path) -> None:
    # given a legitimate 4000x3000 photo (12 Mpixel, within the pixel limit): decoded, its copies take ~200 MB
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(photo)
    info, plan = probe_isolated(photo, 5, LIMITS, ROOMY)
    # when a decoder process allowed 64 MB decodes it
    with pytest.raises(MediaError) as caught:
        list(IsolatedDecode(photo, plan, [], LIMITS.max_pixels, DecoderLimits(memory_mb=64, cpu_s=120)))
    # then it fails media_too_large, naming the setting; with room, the same photo decodes
    assert caught.value.code == MEDIA_TOO_LARGE and "FERVID_DECODE_MEMORY_MB" in caught.value.message
    (_, image), = IsolatedDecode(photo, plan, [], LIMITS.max_pixels, ROOMY)
    assert image.shape == (3000, 4000, 3) and tuple(image[0, 0]) == (150, 120, 90)


def test_a_decode_past_its_cpu_seconds_is_stopped_and_says_so(tmp_path: Path) -> None:
    # given a progressive JPEG of 9000x9000 pixels in as many empty scans as allowed (and a pixel limit that lets
    # it through): a few seconds of CPU to decode
    limits = replace(LIMITS, max_pixels=100_000_000)
    bomb = write_jpeg_scan_bomb(tmp_path / "scans.jpg", side=9000, scans=MAX_JPEG_SCANS)
    info, plan = probe_isolated(bomb, 5, limits, ROOMY)
    # when a decoder process allowed 1 CPU second decodes it
    with pytest.raises(MediaError) as caught:
        list(IsolatedDecode(bomb, plan, [], limits.max_pixels, DecoderLimits(memory_mb=1024, cpu_s=1)))
    # then the kernel stops it and the job's error says why
    assert info.kind == "image"
    assert caught.value.code == MEDIA_TOO_LARGE and "CPU seconds" in caught.value.message


def test_a_decoder_that_crashes_fails_the_decode_and_nothing_else(tmp_path: Path) -> None:
    # given a clip being decoded in a decoder process
    clip = write_video(tmp_path / "clip.mp4", frame_count=96)
    _, plan = probe_isolated(clip, 24, LIMITS, ROOMY)
    decoding = IsolatedDecode(clip, plan, [], LIMITS.max_pixels, ROOMY)
    frames = iter(decoding)
    next(frames)
    # when the decoder crashes, as a decoder bug hit by a crafted file would make it (no such file is at hand: the
    # signal is sent to the decoder process itself)
    assert decoding._child is not None
    os.kill(decoding._child.pid, signal.SIGSEGV)
    # then the decode fails decode_error, saying what happened, and the next decode works
    with pytest.raises(MediaError) as caught:
        list(frames)
    assert caught.value.code == DECODE_ERROR and "SIGSEGV" in caught.value.message
    assert len(list(IsolatedDecode(clip, plan, [], LIMITS.max_pixels, ROOMY))) == len(plan)


def test_the_fork_server_holds_no_thread_but_its_own_when_it_forks_decoders(tmp_path: Path) -> None:
    # given a fork server that has forked decoders for a probe and a decode (and so imported every decoding module)
    from worker.media.isolated import _ForkServer

    media = write_video(tmp_path / "clip.mp4", frame_count=24)
    _, plan = probe_isolated(media, 10, LIMITS, ROOMY)
    assert list(IsolatedDecode(media, plan, [], LIMITS.max_pixels, ROOMY))
    # when its threads are counted, as it waits for the next request
    server = _ForkServer.take()
    try:
        threads = list(Path(f"/proc/{server.process.pid}/task").iterdir())
    finally:
        _ForkServer.give_back(server)
    # then it has one: a library's thread pool alive in it would leave its locks to every decoder it forks
    assert len(threads) == 1


def test_the_fork_server_sees_none_of_the_workers_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # given a worker's environment holding its database URL, broker URL, storage credentials and webhook secrets
    from worker.media.isolated import _ForkServer

    secrets = {"FERVID_DATABASE_URL": "postgresql://fervid:db-secret@db/fervid", "FERVID_BROKER_URL": "redis://:pw@r",
               "AWS_SECRET_ACCESS_KEY": "s3-secret", "FERVID_WEBHOOK_SECRETS": "v1:hook-secret"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    # when a fork server starts (the parent of every decoder process) and decodes through it
    server = _ForkServer()
    try:
        # Read once it has exec'd: during the exec /proc/<pid>/environ is briefly empty (seen under load).
        deadline, environment = time.monotonic() + 10, b""
        while not environment and time.monotonic() < deadline:
            environment = Path(f"/proc/{server.process.pid}/environ").read_bytes()
            time.sleep(0.01)
    finally:
        server.close()
    media = write_video(tmp_path / "clip.mp4", frame_count=12)
    _, plan = probe_isolated(media, 10, LIMITS, ROOMY)
    # then none of them is there, and decoding still works
    leaked = [name for name, value in secrets.items() if name.encode() in environment or value.encode() in environment]
    assert not leaked
    assert b"PATH=" in environment and plan
