"""Frames decoded ahead on their own thread: order, a bounded lead, errors where they belong, and a clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from worker.prefetch import Prefetched


def test_items_arrive_in_order_and_all_of_them() -> None:
    with Prefetched(range(1000), depth=4) as items:
        assert list(items) == list(range(1000))


def test_the_producer_never_runs_more_than_depth_ahead() -> None:
    # given a source that counts what it has produced
    produced = 0

    def source() -> Iterator[int]:
        nonlocal produced
        for index in range(100):
            produced += 1
            yield index

    # when the consumer is slow
    with Prefetched(source(), depth=3) as items:
        for consumed, _ in enumerate(items, start=1):
            time.sleep(0.002)
            # then: the queue holds 3, and one more may wait to be put
            assert produced - consumed <= 4


def test_an_error_of_the_source_is_raised_in_the_consumer_after_what_came_before() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("corrupt frame")

    seen = []
    with pytest.raises(ValueError, match="corrupt frame"), Prefetched(source(), depth=2) as items:
        for item in items:
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_early_stops_the_producer_and_closes_the_source_on_its_own_thread() -> None:
    # given an endless source that records where it was closed (a decoder releasing its container)
    closed_on: list[str] = []

    def source() -> Iterator[int]:
        try:
            index = 0
            while True:
                yield index
                index += 1
        finally:
            closed_on.append(threading.current_thread().name)

    # when the consumer stops after a few items (a cancelled job)
    with Prefetched(source(), depth=2) as items:
        for item in items:
            if item == 5:
                break

    # then the source is closed, by the prefetch thread, and no thread is left behind
    assert closed_on == ["fervid-prefetch"]
    assert not [thread for thread in threading.enumerate() if thread.name == "fervid-prefetch"]


def test_an_error_of_the_consumer_stops_the_producer() -> None:
    with pytest.raises(RuntimeError), Prefetched(iter(range(10**9)), depth=2) as items:
        for item in items:
            if item == 3:
                raise RuntimeError("classifier failed")
    assert not [thread for thread in threading.enumerate() if thread.name == "fervid-prefetch"]


def test_leaving_early_cancels_a_source_whose_producer_waits_on_a_slow_item() -> None:
    # given a source whose next item takes until it is cancelled (a decoder process busy with a bomb), or 60 s
    class Slow:
        def __init__(self) -> None:
            self.cancelled = threading.Event()

        def __iter__(self) -> Iterator[int]:
            yield 1
            self.cancelled.wait(timeout=60)

        def cancel(self) -> None:
            self.cancelled.set()

    slow = Slow()
    # when the consumer leaves after the first item
    with Prefetched(slow, depth=2) as items:
        assert next(items) == 1
    # then the source was cancelled, which freed the producer, rather than the wait running out
    assert slow.cancelled.is_set()
