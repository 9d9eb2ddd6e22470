"""One model, many clients: generations run one at a time, first come first served, off the event loop.

The engine's own `threading.Lock` is not fair (any waiting thread may win), so requests queue here on an
`asyncio.Lock`, whose waiters are woken strictly in arrival order. The lock is held for a generation's whole
run: a streamed reply is never interleaved with another. Each generation is iterated in a worker thread that
hands its text pieces to the event loop; the loop stays free for other requests (and /health) meanwhile.
If the consumer goes away (a client disconnects), the generation is cancelled and stops within one token;
the lock passes on only once the worker has closed the generation, so the engine is free for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synatra_local.runtime.engine import Generation, GenerationStats


class _Pipe:
    """Text pieces from the worker thread to the event loop; the loop is woken only when it waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, wake_each: bool = True) -> None:
        self._loop = loop
        self._wake_each = wake_each
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, piece: str) -> None:
        with self._lock:
            self._pieces.append(piece)
            if not self._wake_each:
                return
            waiter, self._waiter = self._waiter, None
        self._wake(waiter)

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            self._done = True
            self._error = error
            waiter, self._waiter = self._waiter, None
        self._wake(waiter)

    async def get(self) -> str | None:
        """All the text that arrived since the last call (at least one piece), or None at the end."""
        while True:
            with self._lock:
                if self._pieces:
                    pieces, self._pieces = self._pieces, []
                    return "".join(pieces)
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def drain(self) -> str:
        """What arrived since the last `get`, without waiting (possibly nothing)."""
        with self._lock:
            pieces, self._pieces = self._pieces, []
        return "".join(pieces)

    def _wake(self, waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                self._loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Scheduler:
    """Runs generations one at a time in arrival order; see the module docstring."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synatra-generate")
        self.waiting = 0
        self.served = 0
        self.cancelled = 0
        self.last_stats: GenerationStats | None = None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def pieces(self, generation: Generation, *, interval: float | None = 0.0) -> AsyncIterator[str]:
        """The generation's text as it arrives, at most one piece per `interval` seconds.

        Text that arrives within `interval` of the previous piece (or while the reader is busy) is merged into
        the next one, so a very fast model does not cost an event per token; `None` gives the whole text in one
        piece at the end. Waits for its turn first. Leaving the loop early (a cancelled task, a closed
        iterator) cancels the generation; the engine is released within one token.
        """
        self.waiting += 1
        try:
            await self._lock.acquire()
        except BaseException:
            generation.close()
            raise
        finally:
            self.waiting -= 1
        loop = asyncio.get_running_loop()
        pipe = _Pipe(loop, wake_each=interval is not None)

        def release() -> None:
            self._lock.release()

        def work() -> None:
            error: BaseException | None = None
            try:
                with generation:
                    for piece in generation:
                        pipe.put(piece)
            except BaseException as exc:  # handed to the reader, which raises it
                error = exc
            finally:
                self.last_stats = generation.stats
                if generation.stats.stop_reason == "cancelled":
                    self.cancelled += 1
                else:
                    self.served += 1
                pipe.finish(error)
                with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nothing waits for the lock
                    loop.call_soon_threadsafe(release)

        try:
            loop.run_in_executor(self._executor, work)
        except BaseException:
            release()
            generation.close()
            raise
        try:
            sent = -float("inf")
            while (text := await pipe.get()) is not None:
                if interval and (wait := sent + interval - loop.time()) > 0:
                    await asyncio.sleep(wait)  # only when text comes faster than one piece per interval
                    text += pipe.drain()
                sent = loop.time()
                yield text
        finally:
            generation.cancel()  # a no-op once the generation has finished

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
