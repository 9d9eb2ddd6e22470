"""Errors that users cause and can fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class SynatraError(Exception):
    """An expected failure: what went wrong, with which file, and how to fix it."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class CheckpointError(SynatraError):
    """A checkpoint folder, shard or pickle that cannot be read."""


class ModelFileError(SynatraError):
    """A GGUF file that is missing or not usable."""
