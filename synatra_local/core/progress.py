"""Progress reporting that embedders can replace: library code talks to a `Progress`, never to a terminal."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of one long step (download, convert, quantize)."""

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, amount: int) -> None: ...

    def finish(self) -> None: ...


class SilentProgress:
    """The default for library calls: reports nothing."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass
