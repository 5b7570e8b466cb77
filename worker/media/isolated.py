"""Probing and decoding in a process of their own, under a memory and a CPU limit.

Untrusted media is read by C decoders (FFmpeg, libjpeg, libtiff, libheif, libwebp, ...) whose memory follows what
the file declares in ways no header check bounds: reference frames and frame threads, coefficient buffers, 16-bit
conversions. A limit on the worker process itself (RLIMIT_AS / RLIMIT_DATA) would bind ONNX Runtime and CUDA too, and
a prefork child cannot be given a cgroup of its own; so each probe, and each segment's decoding, runs in a decoder
process, forked for it by a fork server, that limits itself before it opens the file: past its memory it fails
`media_too_large`, past its CPU seconds the kernel stops it, and a decoder that crashes takes only it down. Decoded
frames come back over a pipe; the decoder runs no further ahead than the pipe holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from fervid.errors import DECODE_ERROR, MEDIA_TOO_LARGE, MediaError
from fervid.sampling import PlannedFrame, plan_from_json, plan_to_json
from fervid.stopping import StopSignal
from worker.media.limits import MediaLimits
from worker.media.plan import MediaInfo

log = logging.getLogger(__name__)

CHILD_MODULE = "worker.media.isolated_main"
# Messages from a decoder process: a tag byte, then a frame (plan position, height, width, then BGR bytes), or a
# length and JSON (the result, or an error's code and message). The request goes to it as a length and JSON.
FRAME, RESULT, ERROR = b"F", b"R", b"E"
FRAME_HEADER = struct.Struct("<III")
LENGTH = struct.Struct("<I")
NUMBER = struct.Struct("<q")  # from the fork server: a decoder's pid, then its exit status
PIPE_BYTES = 1 << 20  # what an unprivileged process may give a pipe (/proc/sys/fs/pipe-max-size)


@dataclass(frozen=True)
class DecoderLimits:
    """What one decoder process may use: built from the settings at the edge and passed down."""

    memory_mb: int  # allocated beyond what it holds once started (FERVID_DECODE_MEMORY_MB)
    cpu_s: float  # CPU seconds, all threads together (the stage's soft time limit)


def probe_isolated(path: Path, sample_fps: float, limits: MediaLimits, decoder: DecoderLimits,
                   stop: StopSignal | None = None) -> tuple[MediaInfo, list[PlannedFrame]]:
    """`worker.media.probe.probe` in a decoder process, killed (Stopped) once `stop` is set."""
    with _DecoderProcess({"op": "probe", "path": str(path), "sample_fps": sample_fps, "limits": asdict(limits)},
                         decoder) as child, (stop or StopSignal()).waking(child.kill):
        result = child.result()
    return MediaInfo(**result["info"]), plan_from_json(result["plan"])


class IsolatedDecode:
    """`worker.media.decode.decode_planned` in a decoder process: iterating yields (planned frame, upright BGR image)
    in plan order and appends the decode's warnings to `warnings` at the end; `cancel()`, from any thread, kills the
    process so that an iteration blocked on a frame ends at once."""

    def __init__(self, path: Path, plan: list[PlannedFrame], warnings: list[str], max_pixels: int,
                 decoder: DecoderLimits) -> None:
        self.path, self.plan, self.warnings = path, plan, warnings
        self.max_pixels, self.decoder = max_pixels, decoder
        self._child: _DecoderProcess | None = None
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[tuple[PlannedFrame, NDArray[np.uint8]]]:
        if not self.plan or self._cancelled.is_set():
            return
        request = {"op": "decode", "path": str(self.path), "plan": plan_to_json(self.plan),
                   "max_pixels": self.max_pixels}
        with _DecoderProcess(request, self.decoder) as child:
            self._child = child
            if self._cancelled.is_set():  # cancelled while it started
                return
            try:
                for position, image in child.frames():
                    yield self.plan[position], image
                self.warnings.extend(child.result()["warnings"])
            except MediaError:
                if self._cancelled.is_set():
                    return  # killed by cancel(): nobody waits for its frames
                raise

    def cancel(self) -> None:
        self._cancelled.set()
        child = self._child
        if child is not None:
            child.kill()


class _DecoderProcess:
    """One decoder process, forked by a fork server: the request goes in on a pipe that stays open (the decoder
    exits when it closes, so it never outlives this process), messages come back on another."""

    def __init__(self, request: dict[str, Any], limits: DecoderLimits) -> None:
        self.limits = limits
        self.server = _ForkServer.take()
        try:
            self.pid, self.requests, self.answers = self.server.fork()
        except BaseException:
            self.server.close()  # its exchange was cut short (a soft time limit): not to be reused
            raise
        self.exit_code: int | None = None
        self.ended: dict[str, Any] | None = None
        data = json.dumps({**request, "memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s}).encode()
        try:
            self.requests.write(LENGTH.pack(len(data)) + data)
            self.requests.flush()
        except BrokenPipeError:
            pass  # it died at once: reading says how

    def __enter__(self) -> _DecoderProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.kill()
        with contextlib.suppress(OSError):  # the rest of a request it died before reading
            self.requests.close()
        self.answers.close()
        try:
            self._wait()
        except BaseException:
            self.server.close()
            raise
        _ForkServer.give_back(self.server)

    def kill(self) -> None:
        if self.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def frames(self) -> Iterator[tuple[int, NDArray[np.uint8]]]:
        """The frames it sends, until its result (kept for `result()`) or its error (raised)."""
        while True:
            tag = self.answers.read(1)
            if tag != FRAME:
                self.ended = self._end(tag)
                return
            position, height, width = FRAME_HEADER.unpack(self._read(FRAME_HEADER.size))
            image = np.empty((height, width, 3), np.uint8)
            self._read_into(image.data.cast("B"))
            yield position, image

    def result(self) -> dict[str, Any]:
        if self.ended is None:
            self.ended = self._end(self.answers.read(1))
        return self.ended

    def _end(self, tag: bytes) -> dict[str, Any]:
        if tag not in (RESULT, ERROR):
            raise self._died()
        (length,) = LENGTH.unpack(self._read(LENGTH.size))
        message: dict[str, Any] = json.loads(self._read(length))
        if tag == ERROR:
            raise MediaError(message["code"], message["message"])
        return message

    def _read(self, size: int) -> bytes:
        data = bytearray(size)
        self._read_into(memoryview(data))
        return bytes(data)

    def _read_into(self, buffer: memoryview) -> None:
        filled = 0
        while filled < len(buffer):
            count = self.answers.readinto(buffer[filled:])  # type: ignore[attr-defined]
            if not count:
                raise self._died()
            filled += count

    def _wait(self) -> int:
        if self.exit_code is None:
            self.exit_code = self.server.exit_code()
        return self.exit_code

    def _died(self) -> Exception:
        """What its end without a last message means: the kernel stopped it, or a decoder crashed in it."""
        code = self._wait()
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            return MediaError(MEDIA_TOO_LARGE, f"decoding the media was stopped past its {self.limits.cpu_s:.0f} CPU "
                                               "seconds or out of memory; send a shorter, smaller or re-encoded copy")
        if code < 0:
            name = signal.Signals(-code).name
            log.error("the decoder process crashed (%s)", name)
            return MediaError(DECODE_ERROR, f"the decoder crashed on this file ({name}); it is damaged or crafted: "
                                            "send a re-encoded copy")
        return RuntimeError(f"the decoder process ended with status {code} without an answer; see its error above")


# What a decoder process may see of the worker's environment: what Python, the C library and its locale need. Not
# the database URL, the broker's, storage credentials or webhook secrets: a decoder runs on untrusted input.
DECODER_ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                       "LD_LIBRARY_PATH")


def decoder_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The fork server's environment: the allowed names of `environment`, single-threaded numerics (so that forking
    it is safe: NumPy's OpenBLAS would start a thread per core)."""
    kept = {name: value for name, value in environment.items()
            if name in DECODER_ENVIRONMENT or name.startswith("LC_")}
    return {**kept, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


class _ForkServer:
    """A process with the decoding modules imported (`python -m worker.media.isolated_main`) that forks one decoder
    process per request, handing it the request's pipes: a fork costs milliseconds, a fresh interpreter and its
    imports a few hundred. A worker process keeps the ones it started (one, unless it decodes two files at once),
    from its first use on (after the pool forked); one that died is replaced."""

    _lock = threading.Lock()
    _idle: list[_ForkServer] = []
    _owner = 0  # the process whose servers _idle holds: a forked child starts its own

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.socket = ours
        self.process = subprocess.Popen([sys.executable, "-m", CHILD_MODULE], stdin=theirs.fileno(),
                                        env=decoder_environment(os.environ))
        theirs.close()

    @classmethod
    def take(cls) -> _ForkServer:
        with cls._lock:
            if cls._owner != os.getpid():
                cls._idle, cls._owner = [], os.getpid()
            while cls._idle:
                server = cls._idle.pop()
                if server.process.poll() is None:
                    return server
                server.close()
        return cls()

    @classmethod
    def give_back(cls, server: _ForkServer) -> None:
        with cls._lock:
            if cls._owner == os.getpid() and server.process.poll() is None:
                cls._idle.append(server)
                return
        server.close()

    def close(self) -> None:
        """Lets it go: it exits once its socket closes (after the decoder it runs, if any)."""
        self.socket.close()

    def fork(self) -> tuple[int, IO[bytes], IO[bytes]]:
        """A new decoder process: its pid, the pipe to write its request to, the pipe its messages come on."""
        request_read, request_write = os.pipe()
        answer_read, answer_write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # Linux: frames cross in 1 MiB steps, not 64 KiB ones
            fcntl.fcntl(answer_read, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            socket.send_fds(self.socket, [b"f"], [request_read, answer_write])
            pid = self._receive_number()
        except BaseException:
            os.close(request_write)  # the decoder, if forked, reads no request and exits
            os.close(answer_read)
            raise
        finally:
            os.close(request_read)
            os.close(answer_write)
        return pid, os.fdopen(request_write, "wb"), os.fdopen(answer_read, "rb")

    def exit_code(self) -> int:
        """The last decoder's exit status (negative: the signal that ended it), once it has ended."""
        return self._receive_number()

    def _receive_number(self) -> int:
        data = self.socket.recv(NUMBER.size, socket.MSG_WAITALL)
        if len(data) != NUMBER.size:
            self.process.kill()
            raise RuntimeError("the decoders' fork server ended; see its error above")
        (number,) = NUMBER.unpack(data)
        return int(number)
