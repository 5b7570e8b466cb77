"""The decoders' fork server (`python -m worker.media.isolated_main`), started by `worker.media.isolated`: with the
decoding modules imported, it forks one decoder process per request that arrives on its socket (stdin), and reports
the decoder's pid, then its exit status. A decoder does one probe or one plan's decoding under the memory and CPU
limits it is given, and answers on its pipe."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any, NoReturn

from PIL import Image

from fervid.errors import MEDIA_TOO_LARGE, MediaError
from fervid.sampling import plan_from_json, plan_to_json
from worker.media.decode import decode_planned
from worker.media.isolated import ERROR, FRAME, FRAME_HEADER, LENGTH, NUMBER, RESULT
from worker.media.limits import MediaLimits
from worker.media.probe import probe

log = logging.getLogger("worker.media.isolated_main")
CPU_GRACE_S = 10  # past the soft CPU limit (SIGXCPU), the hard one kills


def main() -> None:
    logging.basicConfig(level=logging.WARNING,
                        format="decoder process %(process)d: %(levelname)s %(name)s: %(message)s")
    Image.init()  # every Pillow plugin imported once, here, rather than in each decoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C for the worker: it ends when the worker's socket does
    server = socket.socket(fileno=sys.stdin.fileno())
    try:
        while True:
            message, fds, _, _ = socket.recv_fds(server, 1, 2)
            if not message:
                return  # the worker process ended
            pid = os.fork()
            if pid == 0:
                server.close()
                _run_decoder(*fds)
            for fd in fds:
                os.close(fd)
            server.sendall(NUMBER.pack(pid))
            _, status = os.waitpid(pid, 0)
            server.sendall(NUMBER.pack(os.waitstatus_to_exitcode(status)))
    except (BrokenPipeError, ConnectionResetError):
        return  # the worker process ended while a decoder ran


def _run_decoder(request_fd: int, answer_fd: int) -> NoReturn:
    """The forked decoder's whole life: it never returns into the server's loop."""
    code = 1
    try:
        code = _decoder(request_fd, answer_fd)
    except BaseException:  # a bug: the worker reports the job failed internal_error
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _decoder(request_fd: int, answer_fd: int) -> int:
    requests, answers = os.fdopen(request_fd, "rb"), os.fdopen(answer_fd, "wb")
    (length,) = LENGTH.unpack(requests.read(LENGTH.size) or bytes(LENGTH.size))
    if not length:
        return 0  # the worker went before it asked
    request: dict[str, Any] = json.loads(requests.read(length))
    _limit_self(request["memory_mb"], request["cpu_s"])
    threading.Thread(target=_end_with_worker, args=(requests,), name="fervid-decoder-worker", daemon=True).start()
    try:
        _answer(request, answers)
    except MediaError as error:
        _send_json(answers, ERROR, {"code": error.code, "message": error.message})
    except MemoryError:
        _send_json(answers, ERROR, {"code": MEDIA_TOO_LARGE, "message": (
            f"decoding the media needed more than the {request['memory_mb']} MB a decoder process may use "
            "(FERVID_DECODE_MEMORY_MB); send a copy with smaller frames")})
    except BrokenPipeError:
        return 0  # the worker stopped reading: cancelled
    return 0


def _answer(request: dict[str, Any], answers: IO[bytes]) -> None:
    path = Path(request["path"])
    if request["op"] == "probe":
        info, plan = probe(path, request["sample_fps"], MediaLimits(**request["limits"]))
        _send_json(answers, RESULT, {"info": vars(info), "plan": plan_to_json(plan)})
        return
    plan = plan_from_json(request["plan"])
    positions = {frame.frame_index: position for position, frame in enumerate(plan)}
    warnings: list[str] = []
    for planned, image in decode_planned(path, plan, warnings, request["max_pixels"]):
        answers.write(FRAME + FRAME_HEADER.pack(positions[planned.frame_index], image.shape[0], image.shape[1]))
        answers.write(image.data.cast("B"))
        answers.flush()
    _send_json(answers, RESULT, {"warnings": warnings})


def _send_json(answers: IO[bytes], tag: bytes, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    answers.write(tag + LENGTH.pack(len(data)) + data)
    answers.flush()


def _limit_self(memory_mb: int, cpu_s: float) -> None:
    """Limits this process: its data segment (heap and private writable mappings; unlike the address space, not
    the arenas and libraries it only reserves) to what it holds now, forked, plus `memory_mb`; its CPU time to
    `cpu_s`; and it writes no core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft_cpu = max(1, int(cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, soft_cpu + CPU_GRACE_S))
    try:
        held = _data_segment_bytes()
        resource.setrlimit(resource.RLIMIT_DATA, (held + (memory_mb << 20), resource.RLIM_INFINITY))
    except (OSError, ValueError) as error:  # no /proc (not Linux): the CPU limit still holds
        log.warning("cannot limit the decoder process's memory: %s", error)


def _data_segment_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmData")


def _end_with_worker(requests: IO[bytes]) -> None:
    """Exits once the worker closes the request pipe (nothing more ever comes on it), or dies: a decoder never
    outlives the task that started it."""
    requests.read()
    os._exit(0)


if __name__ == "__main__":
    main()
