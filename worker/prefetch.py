"""An iterable run ahead on its own thread through a bounded queue: the pipeline decodes the next frames while the
current ones are detected and classified (PyAV, OpenCV and ONNX Runtime release the GIL while they compute)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

Item = TypeVar("Item")

_END = object()
_POLL_S = 0.05  # how often a blocked producer looks whether the consumer has gone


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetched(Generic[Item]):
    """`with Prefetched(source, depth) as items: for item in items: ...` yields what `source` yields, in order, with
    at most `depth` items produced ahead. The source's own errors are raised in the consumer. Leaving the block
    early stops the producer and closes the source on the producer's thread (a generator can only be closed
    where it runs), so a decoder never outlives the work it fed; a source with a `cancel()` method is cancelled
    first, from the consumer's thread, so that a producer waiting on a slow item (a decoder process busy with a
    bomb) ends at once."""

    def __init__(self, source: Iterable[Item], depth: int) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="fervid-prefetch", daemon=True)

    def __enter__(self) -> Iterator[Item]:
        self._thread.start()
        return self._consume()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()  # a producer blocked on the full queue sees it within _POLL_S
        cancel = getattr(self._source, "cancel", None)
        if cancel is not None and self._thread.is_alive():
            cancel()
        self._thread.join()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = iter(self._source)
        try:
            for item in iterator:
                if not self._put(item):
                    break
            else:
                self._put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failed(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _consume(self) -> Iterator[Item]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
