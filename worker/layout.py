"""How a worker shares its cores: between its processes, and in each between the face detector and the classifier.

Light on purpose: `fervid worker` settles the layout in its main process, which forks the pool and so must load no
ML runtime (worker/tasks.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fervid.settings import Settings

# One thread: YuNet's small convolutions gain little from more, and the classifier runs beside it on the others
# (worker/pipeline.py overlaps them); processes, not threads, scale detection out.
DETECTOR_THREADS = 1
# One thread: the decoder shares the detector's core. Frame threads would also make damaged media decode differently
# from run to run (error concealment races the threads that read the concealed frame) and a decoder process's memory
# grow with the machine's cores (a frame and its context per thread, up to 16).
DECODER_THREADS = 1


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's CPU set), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def classifier_threads(cores: int) -> int:
    """The classifier's share of a process's cores. The detector and the decoder run beside it on one core (the
    pipeline overlaps them), and a classifier on all of them would be preempted inside each of its parallel steps:
    on 2 cores it made the whole analysis slower (bench/peer_fer.py)."""
    return max(1, cores - DETECTOR_THREADS)


def with_thread_share(settings: Settings, cores: int) -> Settings:
    """`settings` with the classifier's threads for a process on `cores` cores, unless FERVID_INFERENCE_THREADS
    says otherwise."""
    if "inference_threads" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"inference_threads": classifier_threads(cores)})


@dataclass(frozen=True)
class WorkerLayout:
    """What `fervid worker` settles before its pool forks: the settings every child uses, and why its threads."""

    settings: Settings
    usable_cores: int
    concurrency: int

    @classmethod
    def split(cls, settings: Settings, usable_cores: int, concurrency: int) -> WorkerLayout:
        """The usable cores shared between `concurrency` processes, each giving its classifier its share less the
        detector's core, unless FERVID_INFERENCE_THREADS says otherwise."""
        settings = with_thread_share(settings, max(1, usable_cores // max(1, concurrency)))
        return cls(settings, usable_cores, concurrency)
