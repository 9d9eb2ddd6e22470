"""Many clients over one engine: each request's generation is started in the engine (which decodes up to
`parallel` of them together and queues the rest in arrival order) and its text reaches the event loop through a
pipe, without a thread per request.

If the consumer goes away (a client disconnects), the generation is cancelled and its sequence is free within
one decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synatra_local.runtime.batching import TokenLogprob
    from synatra_local.runtime.engine import Engine, Generation, GenerationStats


class _Pipe:
    """Text pieces (with their tokens' logprobs) from the decoding thread to the event loop; the loop is woken
    only when it waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, wake_each: bool = True) -> None:
        self._loop = loop
        self._wake_each = wake_each
        self._lock = threading.Lock()
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, text: str, logprobs: list[TokenLogprob]) -> None:
        with self._lock:
            self._text.append(text)
            self._logprobs += logprobs
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

    async def get(self) -> tuple[str, list[TokenLogprob]] | None:
        """All that arrived since the last call (at least one piece), or None at the end."""
        while True:
            with self._lock:
                if self._text:
                    return self._take()
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def drain(self) -> tuple[str, list[TokenLogprob]]:
        """What arrived since the last `get`, without waiting (possibly nothing)."""
        with self._lock:
            return self._take()

    def _take(self) -> tuple[str, list[TokenLogprob]]:
        text, logprobs = "".join(self._text), self._logprobs
        self._text, self._logprobs = [], []
        return text, logprobs

    def _wake(self, waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                self._loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Scheduler:
    """Starts generations in the engine and counts them for /health; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.served = 0
        self.cancelled = 0
        self.last_stats: GenerationStats | None = None

    @property
    def busy(self) -> bool:
        return self._engine.active > 0

    @property
    def active(self) -> int:
        return self._engine.active

    @property
    def waiting(self) -> int:
        return self._engine.waiting

    async def pieces(
        self, generation: Generation, *, interval: float | None = 0.0
    ) -> AsyncIterator[tuple[str, list[TokenLogprob]]]:
        """The generation's text (and its tokens' logprobs) as it arrives, at most one piece per `interval` seconds.

        Text that arrives within `interval` of the previous piece (or while the reader is busy) is merged into
        the next one, so a very fast model does not cost an event per token; `None` gives the whole text in one
        piece at the end. Leaving the loop early (a cancelled task, a closed iterator) cancels the generation.
        """
        loop = asyncio.get_running_loop()
        pipe = _Pipe(loop, wake_each=interval is not None)

        def done(error: BaseException | None) -> None:
            self.last_stats = generation.stats
            if generation.stats.stop_reason == "cancelled":
                self.cancelled += 1
            else:
                self.served += 1
            pipe.finish(error)

        generation.start(pipe.put, done)
        try:
            sent = -float("inf")
            while (item := await pipe.get()) is not None:
                text, logprobs = item
                if interval and (wait := sent + interval - loop.time()) > 0:
                    await asyncio.sleep(wait)  # only when text comes faster than one piece per interval
                    more, more_logprobs = pipe.drain()
                    text, logprobs = text + more, logprobs + more_logprobs
                sent = loop.time()
                yield text, logprobs
        finally:
            generation.cancel()  # a no-op once the generation has finished
