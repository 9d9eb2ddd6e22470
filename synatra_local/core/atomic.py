"""Outputs appear whole or not at all: write under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import SynatraError

PARTIAL_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_output(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Any exception, KeyboardInterrupt included, removes the temporary file, so no partial output is left.
    """
    target = Path(target)
    refuse_existing([target], force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield partial
        if not partial.exists():
            raise RuntimeError(f"nothing was written to {partial}")
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


def refuse_existing(targets: Iterable[Path], *, force: bool) -> None:
    """Outputs are never overwritten silently; checked for all of them before any work starts."""
    if force:
        return
    for target in targets:
        if Path(target).exists():
            raise SynatraError(
                f"{target} already exists", fix="pass --force to overwrite it, or choose another name"
            )


def ensure_free_space(folder: Path, needed_bytes: int, *, what: str) -> None:
    """Refuse to start a write that cannot finish, saying how much room it needs."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise SynatraError(
            f"not enough disk space in {folder} for {what}: needs {format_bytes(needed_bytes)}, "
            f"{format_bytes(free)} free",
            fix="free some space or choose another output folder",
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
