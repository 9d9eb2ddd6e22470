"""Cut streamed text at stop strings without ever showing part of one.

A stop string such as ``<|im_end|>`` or ``[INST]`` can arrive split over several tokens, so the scanner
holds back the longest tail that could still grow into a stop string and releases it once it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Incremental stop-string filter: text before a stop is shown, the stop and anything after never."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._longest = max((len(stop) for stop in self._stops), default=0)
        self._first_chars = frozenset(stop[0] for stop in self._stops)
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """Whether a stop string has been hit; later feeds return nothing."""
        return self._stopped

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to show now and whether a stop string was hit."""
        if self._stopped:
            return "", True
        buffer = self._held + text
        hits = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        if hits:
            self._held = ""
            self._stopped = True
            return buffer[: min(hits)], True
        keep = self._partial_stop_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """End of stream: release held text, which can no longer become a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of some stop string."""
        window = buffer[-(self._longest - 1) :] if self._longest > 1 else ""
        if not any(char in self._first_chars for char in window):  # the usual case: nothing can start here
            return 0
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
