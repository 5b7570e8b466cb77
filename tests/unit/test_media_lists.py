"""Media that names other media (HLS playlists, concat lists) is refused by content: FFmpeg opens the one file it
was given, with a demuxer from the allowlist, and never a URL or another file named inside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.media_factory import write_video
from fervid.errors import UNSUPPORTED_MEDIA
from tests.unit.test_media import LIMITS, expect_media_error
from tests.unit.test_netpolicy import ConnectionCounter


def playlist(segment: str) -> str:
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\n{segment}\n#EXT-X-ENDLIST\n"


@pytest.fixture
def listener() -> Iterator[ConnectionCounter]:
    counter = ConnectionCounter()
    yield counter
    counter.close()


@pytest.mark.parametrize("name", ["media", "stream.m3u8"])
def test_a_playlist_naming_a_loopback_url_is_unsupported_and_reaches_nothing(
    tmp_path: Path, listener: ConnectionCounter, name: str
) -> None:
    # given a playlist whose segment is on a loopback server
    media = tmp_path / name
    media.write_text(playlist(f"http://127.0.0.1:{listener.port}/segment.ts"))
    # when / then it is not media, and no connection arrived
    expect_media_error(media, UNSUPPORTED_MEDIA)
    assert listener.connections() == 0


def test_a_playlist_naming_a_local_file_is_unsupported(tmp_path: Path) -> None:
    # given a playlist beside a real clip it names (FFmpeg without the allowlist plays the clip)
    write_video(tmp_path / "segment.ts", frame_count=24)
    media = tmp_path / "media"
    media.write_text(playlist("segment.ts"))
    # when / then
    expect_media_error(media, UNSUPPORTED_MEDIA)


def test_a_concat_list_naming_a_local_file_is_unsupported(tmp_path: Path) -> None:
    # given an ffconcat list beside a real clip it names (FFmpeg without the allowlist plays the clip)
    write_video(tmp_path / "clip.mp4", frame_count=24)
    media = tmp_path / "media"
    media.write_text("ffconcat version 1.0\nfile clip.mp4\n")
    # when / then
    expect_media_error(media, UNSUPPORTED_MEDIA)


def test_media_is_told_by_content_without_a_suffix(tmp_path: Path) -> None:
    # given a clip stored as uploads are, without a suffix
    clip = write_video(tmp_path / "clip.mp4", frame_count=24)
    media = clip.rename(tmp_path / "media")
    # when / then it is read as the video it is
    from worker.media.probe import probe

    info, plan = probe(media, 5, LIMITS)
    assert info.kind == "video" and info.frame_count == 24 and plan
