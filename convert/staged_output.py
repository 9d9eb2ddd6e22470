"""The converter's output, copied into reused aligned buffers and written from them with O_DIRECT.

Writing through the page cache fills a fresh page for every byte: measured on this project's VM, 14.5 GB written
that way cost 4.7–5.0 s of kernel time, while the same bytes copied into reused aligned buffers and written with
O_DIRECT cost 0.8 s of kernel time and 2–3 s of copying. The copy is where q/k rows are put in llama.cpp's order;
it fills one buffer while writing threads write the ones before it, several at once, so the disk always has writes
queued. Where the filesystem refuses O_DIRECT (tmpfs on older kernels, some network or FUSE filesystems, macOS) the
same buffers are written through the page cache instead and handed to the disk as they go (`WriteBehind`).
"""

from __future__ import annotations

import errno
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import numpy as np

from .file_ranges import WriteBehind

ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of every common device's block size
STAGING_BYTES = 16 << 20  # one buffer
BUFFERS = 8
WRITERS = 4  # O_DIRECT writes in flight: one at a time leaves the disk idle between them (measured 1.2× slower)


class StagedOutput:
    """Appends bytes to a file whose first `start` bytes (its header) are already written; `finish` completes it.

    Bytes are copied into the current buffer; a full buffer is written on a writing thread while the next ones
    fill. The header's last partial block is read back and written again with the data, so every write is whole
    aligned blocks; the last block is written padded and the file cut back to its true length. Through the page
    cache (no O_DIRECT) a buffer is written at once on the calling thread: that write is only a copy.
    """

    def __init__(self, path: Path, start: int, *, size: int | None = None) -> None:
        size = STAGING_BYTES if size is None else size
        if size % ALIGN or not size:
            raise ValueError(f"staging size {size} is not a multiple of {ALIGN}")
        self._base = start - start % ALIGN  # the file offset of the current buffer's first byte
        self._fd = os.open(path, os.O_RDWR)
        head = os.pread(self._fd, start - self._base, self._base)
        if len(head) != start - self._base:
            os.close(self._fd)
            raise EOFError(f"{path} holds {self._base + len(head)} bytes, not the {start} of its header")
        self._direct_fd = _open_direct(path)
        self._refused_fd: int | None = None
        self._writer = ThreadPoolExecutor(WRITERS, thread_name_prefix="write")
        private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # page-aligned, as O_DIRECT wants; counted as anonymous
        self._maps = [mmap.mmap(-1, size, flags=private) for _ in range(BUFFERS)]
        self._buffers = [np.frombuffer(m, np.uint8) for m in self._maps]
        self._pending: list[Future[None] | None] = [None] * BUFFERS
        self._current = 0
        self._behind = WriteBehind(self._fd, start=self._base)
        self._buffers[0][: len(head)] = np.frombuffer(head, np.uint8)
        self._fill = len(head)

    @property
    def position(self) -> int:
        """The file offset the next byte lands at."""
        return self._base + self._fill

    @property
    def direct(self) -> bool:
        """Whether buffers still go out with O_DIRECT (False once the filesystem has refused it)."""
        return self._direct_fd is not None

    def write(self, array: np.ndarray, row_order: np.ndarray | None = None) -> int:
        """Append `array`'s elements in C order, its rows (first axis) in `row_order` if given; returns the bytes."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # a view when already contiguous
        if row_order is None:
            self._append_bytes(data)
            return data.nbytes
        data = data.reshape(len(array), -1)
        row_bytes = data.shape[1]
        done = 0
        while done < len(row_order):
            fits = min(len(row_order) - done, (len(self._buffers[0]) - self._fill) // row_bytes)
            if fits == 0:  # a row that straddles two buffers
                self._append_bytes(data[row_order[done]])
                done += 1
                continue
            target = self._buffers[self._current][self._fill : self._fill + fits * row_bytes]
            np.take(data, row_order[done : done + fits], axis=0, out=target.reshape(fits, row_bytes), mode="clip")
            self._advance(fits * row_bytes)
            done += fits
        return data.nbytes

    def pad_to(self, alignment: int) -> None:
        """Zero bytes up to the next multiple of `alignment` (GGUF's tensor alignment)."""
        self._append_bytes(np.zeros(-self.position % alignment, np.uint8))

    def finish(self, *, durable: bool = True) -> int:
        """Write what is buffered, cut the file to its length and (if durable) fsync it; returns the length."""
        end = self.position
        whole = self._fill + -self._fill % ALIGN
        self._buffers[self._current][self._fill : whole] = 0
        self._submit(whole)
        for pending in self._pending:
            if pending is not None:
                pending.result()
        os.ftruncate(self._fd, end)
        if durable:
            os.fsync(self._fd)
        return end

    def close(self) -> None:
        """Wait for the writes under way (their errors, if any, were or will be raised elsewhere); let go of it all."""
        self._writer.shutdown(wait=True)
        for fd in (self._fd, self._direct_fd, self._refused_fd):
            if fd is not None:
                os.close(fd)
        self._direct_fd = self._refused_fd = None
        self._buffers.clear()
        for m in self._maps:
            with suppress(BufferError):  # a traceback may still hold a view: freed with it
                m.close()

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _append_bytes(self, data: np.ndarray) -> None:
        done = 0
        while done < len(data):
            n = min(len(data) - done, len(self._buffers[0]) - self._fill)
            self._buffers[self._current][self._fill : self._fill + n] = data[done : done + n]
            self._advance(n)
            done += n

    def _advance(self, n: int) -> None:
        self._fill += n
        if self._fill == len(self._buffers[0]):
            self._submit(self._fill)

    def _submit(self, count: int) -> None:
        """Write the current buffer's first `count` bytes (on a writing thread with O_DIRECT) and move on to the next
        buffer, once its own earlier write is done."""
        view = self._buffers[self._current][:count]
        if count and self._direct_fd is not None:
            self._pending[self._current] = self._writer.submit(self._write_out, view, self._base)
        elif count:
            _write_whole(self._fd, view, self._base)
            self._behind.written_to(self._base + count)
        self._base += count
        self._fill = 0
        self._current = (self._current + 1) % len(self._buffers)
        waiting = self._pending[self._current]
        self._pending[self._current] = None
        if waiting is not None:
            waiting.result()  # the buffer about to be filled is written; its error, if any, is raised here

    def _write_out(self, view: np.ndarray, offset: int) -> None:
        """Runs on a writing thread: all of `view` at `offset` with O_DIRECT, or through the page cache once the
        filesystem has refused it (an alignment it will not take), the rest of the file with it."""
        direct_fd = self._direct_fd
        if direct_fd is not None:
            try:
                _write_whole(direct_fd, view, offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_fd = None  # closed with the rest in `close`, when no write can be using it
                self._refused_fd = direct_fd
        _write_whole(self._fd, view, offset)


def _write_whole(fd: int, view: np.ndarray, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"a write at offset {offset + done} made no progress")
        done += n


def _open_direct(path: Path) -> int | None:
    """A second descriptor of `path` that bypasses the page cache, or None where the platform or filesystem has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def accepts_direct(folder: Path) -> bool:
    """Whether a file in `folder` can be written with O_DIRECT, asked by writing one block to a probe file (for the
    benchmark's floor and the tests, which compare what `StagedOutput` chose against the filesystem's answer)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / ".direct-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, ALIGN) as block:  # page-aligned memory, as O_DIRECT wants
            os.pwrite(fd, block, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
