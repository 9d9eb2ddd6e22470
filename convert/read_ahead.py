"""Prepare the next tensors' bytes on a thread of their own while the current one is written.

Tensors whose bytes must change on the way (q/k row order, dtype) are read and converted here, ahead of the
writer, so that work overlaps the kernel's copies of the unchanged tensors in between instead of following them.
At most `limit` bytes wait in the queue: memory stays bounded however far ahead the thread could run.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import numpy as np

Key = TypeVar("Key")
_DONE = object()


class ReadAhead(Generic[Key]):
    """Runs `jobs` (a key and a function yielding that job's chunks) in order on one thread; `chunks(key)` takes
    them back in the same order. A job's exception is raised by `chunks` for that job; `close` stops the thread."""

    def __init__(self, jobs: Iterable[tuple[Key, Callable[[], Iterator[np.ndarray]]]], limit: int) -> None:
        self._limit = limit
        self._queue: deque[tuple[Key, object]] = deque()
        self._queued_bytes = 0
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._produce, args=(jobs,), name="read-ahead", daemon=True)
        self._thread.start()

    def chunks(self, key: Key) -> Iterator[np.ndarray]:
        """The chunks of job `key`, which must be the next job not yet taken."""
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                got, item = self._queue.popleft()
                if isinstance(item, np.ndarray):
                    self._queued_bytes -= item.nbytes
                self._ready.notify_all()
            if got != key:
                raise RuntimeError(f"read-ahead out of order: wanted {key!r}, next is {got!r}")
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, np.ndarray)
            yield item

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._queue.clear()
            self._ready.notify_all()
        self._thread.join()

    def __enter__(self) -> ReadAhead[Key]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _produce(self, jobs: Iterable[tuple[Key, Callable[[], Iterator[np.ndarray]]]]) -> None:
        for key, make in jobs:
            try:
                for chunk in make():
                    if not self._put(key, chunk, chunk.nbytes):
                        return
            except Exception as exc:  # handed to the writer, which raises it where this job's bytes belong
                self._put(key, exc, 0)
                return
            if not self._put(key, _DONE, 0):
                return

    def _put(self, key: Key, item: object, nbytes: int) -> bool:
        with self._ready:
            while not self._closed and self._queued_bytes and self._queued_bytes + nbytes > self._limit:
                self._ready.wait()
            if self._closed:
                return False
            self._queue.append((key, item))
            self._queued_bytes += nbytes
            self._ready.notify_all()
            return True
