"""A rich progress bar on stderr, for the CLI; library callers pass their own `Progress` or none."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ._app import stderr


class TerminalProgress:
    def __init__(self, enabled: bool = True) -> None:
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._enabled = enabled

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        if not self._enabled:
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn()]
        if total is not None:
            columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
        self._bar = Progress(*columns, TimeElapsedColumn(), console=stderr, transient=False)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)

    def finish(self) -> None:
        if self._bar is not None:
            if self._task is not None:
                task = self._bar.tasks[0]
                if task.total is None:
                    self._bar.update(self._task, total=1, completed=1)
            self._bar.stop()
        self._bar = None
        self._task = None


class CountingProgress(TerminalProgress):
    """A bar counted in steps (windows, chunks), not bytes."""

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        if not self._enabled:
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn()]
        self._bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)
