"""Media made on the fly (never committed) for tests and benchmarks: clips whose frames carry their index in pixels."""

from __future__ import annotations

import io
import math
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image

WIDTH, HEIGHT = 160, 96  # not square, so a missed rotation changes the shape
INDEX_BITS = 10
BLOCK = WIDTH // INDEX_BITS  # 16x16 blocks along the top edge, one bit each: survives lossy compression
CV2_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def indexed_frame(index: int) -> NDArray[np.uint8]:
    """An upright BGR frame with `index` written in binary along its top edge (white = 1)."""
    frame = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
    frame[HEIGHT // 2:, :, 1] = 160  # a green lower half: upside down is visible too
    for bit in range(INDEX_BITS):
        frame[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if index >> bit & 1 else 0
    return frame


def read_index(image: NDArray[np.uint8]) -> int:
    """The index written by `indexed_frame`, read from an upright image."""
    means = [image[2:BLOCK - 2, bit * BLOCK + 2:(bit + 1) * BLOCK - 2].mean() for bit in range(INDEX_BITS)]
    return sum(1 << bit for bit, mean in enumerate(means) if mean > 128)


def write_video(path: Path, *, frame_count: int = 72, fps: int = 24, gop: int = 12, codec: str = "libx264",
                pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None, rotation_cw: int = 0,
                mirrored: bool = False, pixel_aspect: Fraction = Fraction(1), interlaced: bool = False,
                faststart: bool = False, first_index: int = 0) -> Path:
    """A clip of indexed frames (`first_index` onwards). `gop`: frames between keyframes; `pts_ms`: explicit
    (variable) timestamps in ms; `rotation_cw`: the clockwise turn a viewer applies (display matrix), frames stored
    turned the other way; `mirrored`: the viewer also mirrors left-right before turning; `pixel_aspect`: frames
    stored with non-square pixels of this width/height (anamorphic), so squeezed horizontally; `interlaced`: coded
    as fields (H.264), the bottom field showing another moment (here the negative of the frame)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        codec_options = {"g": str(gop), "sc_threshold": "0"} if codec == "libx264" else {"g": str(gop)}
        if interlaced:
            codec_options |= {"x264-params": "interlaced=1:tff=1", "crf": "12"}
        stream = container.add_stream(codec, rate=fps, options=codec_options)
        stored_width, stored_height = (HEIGHT, WIDTH) if rotation_cw in (90, 270) else (WIDTH, HEIGHT)
        stored_width = round(stored_width / pixel_aspect)
        stream.width, stream.height, stream.pix_fmt = stored_width, stored_height, pix_fmt
        if pixel_aspect != 1:
            stream.codec_context.sample_aspect_ratio = pixel_aspect
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation_cw or mirrored:
            stream.set_display_matrix(display_matrix(rotation_cw, mirrored))
        for index in range(frame_count if pts_ms is None else len(pts_ms)):
            image = indexed_frame(first_index + index)
            if rotation_cw:
                image = cv2.rotate(image, CV2_ROTATE[(360 - rotation_cw) % 360])
            if mirrored:
                image = cv2.flip(image, 1)
            if interlaced:
                image[1::2] = 255 - image[1::2]
            if pixel_aspect != 1:
                image = cv2.resize(image, (stored_width, stored_height), interpolation=cv2.INTER_AREA)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def display_matrix(rotation_cw: int, mirrored: bool) -> list[int]:
    """FFmpeg's display matrix (16.16 fixed point, row-vector convention) for "mirror left-right if `mirrored`,
    then turn `rotation_cw` degrees clockwise"; the translation is left at zero, as players ignore it."""
    turn = math.radians(rotation_cw)
    cos, sin = round(math.cos(turn)), round(math.sin(turn))
    a, b, c, d = cos, sin, -sin, cos  # a clockwise turn with rows growing downwards: p' = a*p + c*q, q' = b*p + d*q
    if mirrored:
        a, b = -a, -b  # the mirror acts first: p -> -p
    one = 1 << 16
    return [a * one, b * one, 0, c * one, d * one, 0, 0, 0, 1 << 30]


def write_joined_recordings(path: Path, parts: int, frame_count: int, fps: int = 24) -> Path:
    """MPEG-TS recordings joined end to end (`cat a.ts b.ts`): each part restarts its timestamps at the same
    value, and the frame indices run on across parts."""
    with path.open("wb") as joined:
        for part in range(parts):
            piece = write_video(path.with_name(f"part{part}.ts"), frame_count=frame_count, fps=fps,
                                first_index=part * frame_count)
            joined.write(piece.read_bytes())
    return path


def write_audio(path: Path, seconds: float = 1.0) -> Path:
    """An audio-only file (AAC in an MP4/M4A container)."""
    rate = 16_000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        samples = np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds))).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start:start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_animation(path: Path, durations_ms: list[int]) -> Path:
    """An animated image of indexed frames, lossless (format from the suffix), showing frame i for durations_ms[i]."""
    frames = [Image.fromarray(cv2.cvtColor(indexed_frame(index), cv2.COLOR_BGR2RGB))
              for index in range(len(durations_ms))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations_ms, loop=0, lossless=True)
    return path


def write_still(path: Path, exif_orientation: int = 1) -> Path:
    """Frame 7 as a still; in a JPEG or HEIC with an EXIF orientation, stored turned so that a viewer sees it
    upright (HEIC: the encoder turns the orientation into the container's own rotation property)."""
    image = indexed_frame(7)
    stored_turn = {1: 0, 3: 180, 6: 270, 8: 90}[exif_orientation]  # clockwise, undoing the viewer's turn
    if stored_turn:
        image = cv2.rotate(image, CV2_ROTATE[stored_turn])
    still = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = exif_orientation
    if path.suffix in (".jpg", ".jpeg"):
        still.save(path, exif=exif, quality=95)
    elif path.suffix in (".heic", ".heif"):
        import pillow_heif  # the encoder, a test dependency; the runtime reads HEIF with the decode-only pi-heif

        pillow_heif.from_pillow(still).save(path, quality=95, exif=exif.tobytes())
    else:
        still.save(path)
    return path


def write_png_bomb(path: Path, side: int = 100_000) -> Path:
    """A PNG of a few hundred bytes whose header declares side x side pixels (8-bit grey)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (side + 1) * 4)  # a few rows; a decoder would need the rest
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def write_jpeg_scan_bomb(path: Path, side: int, scans: int) -> Path:
    """A progressive JPEG of a few bytes per scan: its header declares side x side pixels (8-bit grey) and its
    first scan is repeated `scans` times, each without data, so a decoder passes over every pixel once per scan."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    head, position = bytearray(data[:2]), 2
    while True:
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        segment = bytearray(data[position:position + 2 + length])
        if marker == 0xDA:  # the first scan's header: repeated, its entropy-coded data left out
            path.write_bytes(bytes(head) + bytes(segment) * scans + b"\xff\xd9")
            return path
        if marker == 0xC2:  # SOF2: precision, then height and width
            segment[5:9] = struct.pack(">HH", side, side)
        head += segment
        position += 2 + length


def write_gif_bomb(path: Path, side: int = 65535) -> Path:
    """A GIF of a few dozen bytes whose logical screen is side x side pixels around one 1x1 frame."""
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", side, side)
    path.write_bytes(bytes(data))
    return path


def write_tiff(path: Path, pages: int = 1, sixteen_bit: bool = False) -> Path:
    """Frames 7, 8, ... as the pages of a TIFF, 8 or 16 bits per channel (16-bit: each value times 257)."""
    images = [indexed_frame(7 + page) for page in range(pages)]
    if sixteen_bit:
        images = [image.astype(np.uint16) * 257 for image in images]
    if not cv2.imwritemulti(str(path), images):
        raise OSError(f"cannot write {path}")
    return path


def write_retimed_clip(source: Path, target: Path, repeat: int = 2) -> Path:
    """`source`'s packets remuxed into Matroska with each timestamp given to `repeat` frames in a row (as from a
    capture whose clock ticks slower than its frames): timestamps that repeat, the frames themselves intact."""
    with av.open(str(source)) as original, av.open(str(target), "w", format="matroska") as remuxed:
        stream = original.streams.video[0]
        copy = remuxed.add_stream_from_template(stream)
        interval = round(1 / (stream.average_rate * stream.time_base))
        for index, packet in enumerate(p for p in original.demux(stream) if p.size):
            packet.pts = packet.dts = index // repeat * interval
            packet.stream = copy
            remuxed.mux(packet)
    return target


def mdat_range(path: Path) -> tuple[int, int]:
    """Byte range of the payload of the MP4's media data box (where the coded frames are)."""
    data = path.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"mdat":
            return offset + 8, offset + size
        offset += size
    raise ValueError(f"{path} has no mdat box")


def write_looped_clip(source: Path, target: Path, loops: int, fps: int = 30, gop: int = 30,
                      size: tuple[int, int] | None = None) -> Path:
    """A long real clip: every frame of `source` played `loops` times (H.264, a keyframe every `gop` frames),
    resized to `size` (width, height) if given."""
    with av.open(str(source)) as container:
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    if size is not None:
        frames = [np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), dtype=np.uint8)
                  for image in frames]
    with av.open(str(target), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"g": str(gop), "preset": "ultrafast"}
        for _ in range(loops):
            for image in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target
