"""PyAV demuxing: the video stream, its packets, and the `StreamIndex` of frame and keyframe timestamps they give."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction

import av
import av.error

from fervid.errors import DECODE_ERROR, MEDIA_TOO_LARGE, UNSUPPORTED_MEDIA, MediaError
from worker.layout import DECODER_THREADS
from worker.media.plan import StreamIndex

log = logging.getLogger(__name__)


def video_stream(container: av.container.InputContainer, max_pixels: int) -> av.video.stream.VideoStream:
    # Cover art in audio files is a one-picture "video" stream; it is not a video.
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        raise MediaError(UNSUPPORTED_MEDIA, "the file has no video stream (audio only, or another kind of data)")
    stream = max(videos, key=lambda s: bool(s.disposition & av.stream.Disposition.default))
    if stream.codec_context is None:
        raise MediaError(UNSUPPORTED_MEDIA, f"this file ({container.format.name}) holds pictures in a format with no "
                                            "decoder available (vector images such as SVG are not supported)")
    # The decoder refuses frames past the limit even where the container header understates them.
    stream.codec_context.options = {"max_pixels": str(max_pixels)}
    stream.codec_context.thread_count = DECODER_THREADS
    return stream


def header_duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    """The stream's packets; a damaged or truncated tail ends the iteration instead of raising."""
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            return
        except MemoryError:
            raise  # the decoder process's memory limit: not damage (av.error.MemoryError is an FFmpegError too)
        except (av.error.FFmpegError, OSError):
            yield av.Packet()  # empty: drains the frames the decoder still holds
            return
        yield packet


def decoded(packet: av.Packet, stream: av.video.stream.VideoStream) -> list[av.VideoFrame]:
    try:
        return stream.decode(packet)
    except MemoryError:
        raise  # the decoder process's memory limit: not damage
    except (av.error.FFmpegError, OSError):
        return []  # a damaged packet: its frames are missing, the caller counts them


def index_stream(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 max_frames: int) -> tuple[StreamIndex, av.VideoFrame | None]:
    """Demuxes every packet of the stream (decoding only until the first frame comes out)."""
    durations: dict[int, int] = {}
    keyframes: list[int] = []
    untimed = timed = 0
    last_dts: int | None = None
    dts_went_back = False
    first_frame: av.VideoFrame | None = None
    restarts = _RestartPoints(container.format.name, stream.codec_context.name)
    for count, packet in enumerate(packets(container, stream), start=1):
        if count > max_frames:  # the header can understate: counted before the index outgrows memory
            raise MediaError(MEDIA_TOO_LARGE, f"the video has over {max_frames} frames (FERVID_MAX_FRAMES)")
        if first_frame is None:
            frames = decoded(packet, stream)
            first_frame = frames[0] if frames else None
        timestamp = packet.pts if packet.pts is not None else packet.dts
        if not packet.size:
            continue
        if timestamp is None:
            untimed += 1
            restarts.add(packet, None)
            continue
        if packet.dts is not None:
            dts_went_back |= last_dts is not None and packet.dts < last_dts
            last_dts = packet.dts
        if packet.is_keyframe:
            keyframes.append(timestamp)
        if not packet.is_discard:
            durations[timestamp] = packet.duration or 0
            timed += 1
            restarts.add(packet, timestamp)
    time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1)
    frame_interval = 1 / (Fraction(stream.average_rate) * time_base) if stream.average_rate else Fraction(0)
    if not durations and untimed:
        return _order_index(untimed, frame_interval * time_base, restarts.found()), first_frame
    if dts_went_back or timed > len(durations):
        # Timestamps that repeat or run backwards cannot place frames in time: joined recordings each restart
        # theirs, and sorting would interleave them (or collapse equal ones). Play them in order instead.
        log.info("timestamps repeat or run backwards: frames are timed by their order")
        return (_order_index(timed + untimed, _typical_interval(durations, frame_interval) * time_base,
                             restarts.found()), first_frame)
    frame_pts = sorted(durations)
    if not frame_pts:
        return StreamIndex([], [], 0, Fraction(0), time_base), first_frame
    keyframes.sort()
    last = frame_pts[-1]
    end = last + (durations[last] or frame_interval)
    return StreamIndex(frame_pts, keyframes, frame_pts[0], Fraction(end), time_base), first_frame


def _order_index(frame_count: int, frame_seconds: Fraction, restarts: list[tuple[int, int]]) -> StreamIndex:
    """Frames counted in order and timed one frame interval apart: for raw streams, which carry no timestamps,
    and for streams whose timestamps cannot be trusted. Decoding starts from the first frame or a restart point."""
    if not frame_seconds > 0:
        raise MediaError(DECODE_ERROR, "the video stream has neither usable timestamps nor a frame rate")
    return StreamIndex(list(range(frame_count)), [0] + [ordinal for ordinal, _ in restarts], 0, Fraction(frame_count),
                       frame_seconds, by_order=True, keyframe_pos=[-1] + [offset for _, offset in restarts])


# Demuxers that find their way into a file read from a keyframe packet's offset (sync bytes, start codes), so a
# segment timed by order can start there instead of at the first frame.
RESYNCING_DEMUXERS = frozenset({"mpegts", "mpeg", "h264", "hevc"})
H264_IDR, H264_VCL = 5, range(1, 6)
HEVC_IDR, HEVC_VCL = (19, 20), range(32)  # IDR_W_RADL (its leading pictures decode from it), IDR_N_LP


class _RestartPoints:
    """The keyframes a decoder counting frames by order can start at and number the frames as it would from the
    start: none of the frames decoded after one is shown before it (a closed group of pictures). With timestamps,
    no later packet of its group is stamped earlier (they hold within each joined recording); without, it must be an
    H.264 or HEVC IDR picture. Fed the frame packets in decoding order."""

    def __init__(self, demuxer: str, codec: str) -> None:
        self.usable = demuxer in RESYNCING_DEMUXERS
        self.codec = codec
        self.ordinal = -1
        self.points: list[tuple[int, int]] = []  # (frame position, file offset)
        self.candidate: tuple[int, int, int | None] | None = None  # the open group: (position, offset, timestamp)

    def add(self, packet: av.Packet, timestamp: int | None) -> None:
        self.ordinal += 1
        if not self.usable:
            return
        if packet.is_keyframe:
            self._close()
            clean = timestamp is not None or _is_idr(bytes(packet), self.codec)
            offset = packet.pos if packet.pos is not None else -1
            self.candidate = (self.ordinal, offset, timestamp) if clean and offset >= 0 else None
        elif self.candidate is not None and self.candidate[2] is not None and (
                timestamp is None or timestamp < self.candidate[2]):
            self.candidate = None  # shown before its keyframe (or cannot tell): an open group

    def found(self) -> list[tuple[int, int]]:
        self._close()
        return [point for point in self.points if point[0] > 0]

    def _close(self) -> None:
        if self.candidate is not None:
            self.points.append(self.candidate[:2])
            self.candidate = None


def _is_idr(data: bytes, codec: str) -> bool:
    """Whether an Annex B access unit's first picture (VCL NAL unit) is an IDR one."""
    start = data.find(b"\x00\x00\x01")
    while 0 <= start < len(data) - 3:
        header = data[start + 3]
        if codec == "h264" and header & 0x1F in H264_VCL:
            return header & 0x1F == H264_IDR
        if codec == "hevc" and header >> 1 & 0x3F in HEVC_VCL:
            return header >> 1 & 0x3F in HEVC_IDR
        start = data.find(b"\x00\x00\x01", start + 3)
    return False


def _typical_interval(durations: dict[int, int], frame_interval: Fraction) -> Fraction:
    """The frame interval in time_base units: the stream's average rate, else its most common packet duration."""
    if frame_interval:
        return frame_interval
    counts: dict[int, int] = {}
    for duration in durations.values():
        if duration > 0:
            counts[duration] = counts.get(duration, 0) + 1
    return Fraction(max(counts, key=lambda duration: counts[duration])) if counts else Fraction(0)
