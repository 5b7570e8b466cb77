"""Stopping work before it ends: its job was cancelled, or its claim was taken over (fervid.lifecycle).

A watcher sets the signal from another thread (worker.heartbeats); work blocked where no check can run (a socket
read, a decoder process) registers how to wake it, so it stops within a heartbeat instead of at its next check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Stopped(Exception):
    """The work was stopped by its StopSignal: nothing is wrong with it, and nothing is to be recorded for it."""


class StopSignal:
    def __init__(self) -> None:
        self._set = threading.Event()
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._set.is_set()

    def set(self) -> None:
        with self._lock:
            self._set.set()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def check(self) -> None:
        """Stopped, once the signal is set."""
        if self._set.is_set():
            raise Stopped

    @contextmanager
    def waking(self, wake: Callable[[], None]) -> Iterator[None]:
        """Calls `wake` (from the setting thread) if the signal is set while the block runs, or at once if it is set
        already; raises Stopped, not what the wake caused, when the signal was set."""
        with self._lock:
            self._wakers.append(wake)
            already = self._set.is_set()
        if already:
            wake()
        try:
            yield
        except Exception as error:  # what the wake caused (a cut socket, a killed decoder) is the stop
            if self._set.is_set():
                raise Stopped from error
            raise
        finally:
            with self._lock:
                self._wakers.remove(wake)
        self.check()
