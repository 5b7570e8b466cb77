"""Model work a worker's main process has done before Celery forks its pool, each in a spawned process: that work
starts the thread pools of OpenCV, ONNX Runtime and OpenMP, and a child forked from a process where they are alive
inherits their locks without the threads that would release them (a pool process hung for ever in
`cv2.setNumThreads`). Spawned, not forked, so that nothing of the main process is copied into it either; the
outcome reaches the pool processes through the model cache.

Light on purpose, like worker/layout.py: the ML runtime is imported in the spawned process only.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

log = logging.getLogger(__name__)


def _check_int8(model_path: Path, cache_dir: Path, threads: int, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from models.backends.ort import int8_trusted

    int8_trusted(model_path, cache_dir, threads)  # says in the log when the CPU's integer kernels are not trusted


def check_int8_apart(model_path: Path, cache_dir: Path, threads: int) -> None:
    """The INT8 check of `model_path` (models.int8_check), remembered in `cache_dir`, run in a spawned process;
    nothing to do for a float model."""
    spawn = multiprocessing.get_context("spawn")
    check = spawn.Process(target=_check_int8, name="fervid-int8-check",
                          args=(model_path, cache_dir, threads, logging.getLogger().getEffectiveLevel()))
    check.start()
    check.join()
    if check.exitcode != 0:  # each pool process then checks for itself, which is safe there (it never forks)
        log.warning("the INT8 check process ended with exit code %s; the worker processes check for themselves",
                    check.exitcode)
