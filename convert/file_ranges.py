"""Move checkpoint bytes with plain file calls: unchanged tensors are copied inside the kernel, the rest read whole.

A memory-mapped shard is read by page faults, 4 KiB (or a fault-around window) at a time; `copy_file_range` lets
the kernel move an unchanged tensor from shard to output the way `cp` does, never entering Python, and `preadv`
fills a buffer with one large read where the bytes must be changed first (q/k row order, dtype).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

STEP_BYTES = 64 << 20  # per call: progress and Ctrl-C stay responsive, the kernel still sees large requests
# errors that mean "this kernel or filesystem pair cannot do it", not "the disk failed"
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


class SourceFiles:
    """Read-only descriptors of a checkpoint's shards, opened on first use with a sequential-read hint (by the
    writer or the read-ahead thread, whichever comes first)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._opening = threading.Lock()

    def fd(self, path: Path) -> int:
        with self._opening:
            if path not in self._fds:
                fd = os.open(path, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self._fds[path] = fd
            return self._fds[path]

    def prefetch(self, path: Path, offset: int, count: int) -> None:
        """Ask the kernel to start reading a range now (the next tensor, while this one is written)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd(path), offset, count, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> SourceFiles:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def copy_range(
    src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, count: int, on_copied: Callable[[int], None]
) -> None:
    """Copy `count` bytes between two positions, in the kernel where it can, else by large reads and writes."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < count:
        step = min(STEP_BYTES, count - done)
        n = 0
        if kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, step, src_offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
        if not kernel:
            n = _copy_by_buffer(src_fd, src_offset + done, dst_fd, dst_offset + done, step)
        if n == 0:
            raise EOFError(f"source ended {count - done} bytes early")
        done += n
        on_copied(n)


def _copy_by_buffer(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, count: int) -> int:
    data = os.pread(src_fd, count, src_offset)
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(dst_fd, view[written:], dst_offset + written)
    return len(data)


def read_array(fd: int, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """`shape` elements of `dtype` starting at byte `offset`, read into a fresh array (no memory map)."""
    out = np.empty(shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise EOFError(f"source ended {len(view) - got} bytes early")
        got += n
    return out
