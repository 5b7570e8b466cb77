"""`fervid worker` splits the cores it may use between its processes, and every forked child really gets its share."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.integration.conftest import ServiceEnv, wait_for

CHILD_LINE = re.compile(r"inference threads: (\d+) \(of (\d+) usable cores, concurrency (\d+)\)")


def child_thread_lines(env: ServiceEnv, children: int) -> list[tuple[int, int, int]]:
    """The line each forked child logs once as it starts, waited for until every child has written it."""
    def found() -> list[tuple[int, int, int]] | None:
        lines = [tuple(int(part) for part in match) for match in CHILD_LINE.findall(env.worker_logs())]
        return lines if len(lines) >= children else None  # type: ignore[return-value]

    lines = wait_for(found, timeout=120, describe=env.worker_logs)
    assert isinstance(lines, list)
    return lines


def test_each_worker_child_gets_its_share_of_the_usable_cores(service_env: ServiceEnv) -> None:
    # given this process's usable cores (its CPU affinity), and no FERVID_INFERENCE_THREADS
    usable = len(os.sched_getaffinity(0))
    assert "FERVID_INFERENCE_THREADS" not in os.environ and "FERVID_INFERENCE_THREADS" not in service_env.values

    # when a worker with two processes starts
    service_env.start_worker(concurrency=2)

    # then both forked children run their classifier on half the usable cores each less the detector's (at least 1)
    assert child_thread_lines(service_env, 2) == [(max(1, max(1, usable // 2) - 1), usable, 2)] * 2


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_worker_pinned_to_one_core_gives_each_child_one_thread(service_env: ServiceEnv) -> None:
    # given a worker pinned to core 0, on a machine that may have many more
    # when it starts with two processes
    service_env.start_worker(concurrency=2, prefix=("taskset", "-c", "0"))

    # then each child counts the one core it may use, not os.cpu_count()
    assert child_thread_lines(service_env, 2) == [(1, 1, 2)] * 2


def test_an_explicit_thread_count_is_kept(service_env: ServiceEnv) -> None:
    # given FERVID_INFERENCE_THREADS set by the operator
    # when a worker with two processes starts
    service_env.start_worker(concurrency=2, extra={"FERVID_INFERENCE_THREADS": "3"})

    # then each child uses exactly that many
    assert [threads for threads, _, _ in child_thread_lines(service_env, 2)] == [3, 3]
