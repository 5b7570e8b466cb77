"""What a file is, for PyAV: opened as a container, or told apart as damaged (it starts like one) or foreign."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import av.error

from fervid.errors import DECODE_ERROR, UNSUPPORTED_MEDIA, MediaError

# Leading bytes of containers FFmpeg reads: a file that starts like one but won't open is damaged, not foreign.
CONTAINER_SIGNATURES = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba",
                        b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", b"\x89PNG", b"\xff\xd8\xff", b"GIF8")
ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
TS_PACKET = 188


def looks_like_container(head: bytes) -> bool:
    if head.startswith(CONTAINER_SIGNATURES) or head[4:8] in ISO_BOX_TYPES:
        return True
    return len(head) > 2 * TS_PACKET and all(head[i] == 0x47 for i in (0, TS_PACKET, 2 * TS_PACKET))


# The demuxers media may be read with (FFmpeg's names; "mov" covers mp4/m4a/3gp, "matroska" webm). Playlists and
# lists (hls, dash, concat, image2 sequences, ...) are left out: they make FFmpeg open further files or URLs named
# inside the upload.
DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "mxf", "nut", "ivf", "gif", "apng",
            "h264", "hevc", "m4v", "mpegvideo", "mjpeg", "yuv4mpegpipe",
            "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe",
            "svg_pipe")  # no decoder here, but opened it is told apart as a vector image
OPEN_OPTIONS = {
    "protocol_whitelist": "file",  # nested opens inherit it: no network protocol, whatever the media names
    "format_whitelist": ",".join(DEMUXERS),
}


def open_container(path: Path) -> av.container.InputContainer:
    """The media at `path` opened by FFmpeg with a demuxer chosen by content from DEMUXERS, reading that file only."""
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore", options=OPEN_OPTIONS)
    except MemoryError:
        raise  # the decoder process's memory limit: not damage
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        with path.open("rb") as file:
            head = file.read(3 * TS_PACKET + 1)
        if looks_like_container(head):
            raise MediaError(DECODE_ERROR, "the file looks like a video container but cannot be read; it is "
                                           "probably truncated or damaged") from error
        raise MediaError(UNSUPPORTED_MEDIA, "the file is not a video or image format that can be read") from error


@contextmanager
def open_container_at(path: Path, offset: int, demuxer: str) -> Iterator[av.container.InputContainer]:
    """The media at `path` read from byte `offset` on, as if the file began there, by `demuxer` (one of DEMUXERS,
    that finds its way into a stream read from the middle); FFmpegError when it cannot."""
    if demuxer not in DEMUXERS:
        raise ValueError(f"{demuxer} is not a demuxer media may be read with")
    with _FileFrom(path, offset) as file, av.open(file, mode="r", format=demuxer, metadata_errors="ignore",
                                                  options={"format_whitelist": demuxer}) as container:
        yield container


class _FileFrom(io.RawIOBase):
    """A file read from `offset` on: position 0 is that byte."""

    def __init__(self, path: Path, offset: int) -> None:
        self.file = path.open("rb")
        self.offset = offset
        self.file.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self.file.readinto(buffer)

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position += self.offset
        return self.file.seek(position, whence) - self.offset

    def tell(self) -> int:
        return self.file.tell() - self.offset

    def close(self) -> None:
        self.file.close()
        super().close()
