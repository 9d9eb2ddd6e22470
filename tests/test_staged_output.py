"""convert/staged_output.py: bytes appended after a header land exactly where a plain write would put them, rows in
the asked order, with O_DIRECT where the filesystem takes it and through the page cache where it does not; a failed
write is raised, never lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from synatra_local.convert import gguf_export, staged_output
from synatra_local.convert.api import convert
from synatra_local.convert.staged_output import ALIGN, StagedOutput, accepts_direct
from synatra_local.convert.tiny import build_checkpoint

HEADER = bytes(range(256)) * 23 + b"tail"  # 5892 bytes: ends mid-block


def _file_with_header(tmp_path: Path, header: bytes = HEADER) -> Path:
    path = tmp_path / "out.bin"
    path.write_bytes(header)
    return path


def _pieces(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.integers(0, 256, 3 * ALIGN + 5, dtype=np.uint8),
        rng.standard_normal((64, 48)).astype(np.float16),  # 6144 bytes
        rng.standard_normal((2, 3, 5)).astype(np.float32)[:, ::2],  # not contiguous: C order of the view
        np.zeros(0, np.float32),
        rng.integers(0, 1 << 30, 9000, dtype=np.int64),
    ]


@pytest.mark.parametrize("size", [ALIGN, 3 * ALIGN, 32 << 20])
def test_appended_bytes_follow_the_header_exactly(tmp_path: Path, size: int) -> None:
    """Buffers smaller than one piece, a few pieces, or all of them: the file is the header and the pieces."""
    path = _file_with_header(tmp_path)
    pieces = _pieces(np.random.default_rng(0))
    with StagedOutput(path, len(HEADER), size=size) as out:
        assert out.position == len(HEADER)
        for piece in pieces:
            assert out.write(piece) == piece.nbytes
            out.pad_to(32)
        end = out.finish()
    expected = bytearray(HEADER)
    for piece in pieces:
        expected += np.ascontiguousarray(piece).tobytes()
        expected += bytes(-len(expected) % 32)
    assert end == len(expected)
    assert path.read_bytes() == bytes(expected)


@pytest.mark.parametrize("size", [ALIGN, 2 * ALIGN, 32 << 20])
def test_rows_are_copied_in_the_given_order(tmp_path: Path, size: int) -> None:
    """q/k rows interleaved per head: whole rows where they fit, a row split across two buffers where not."""
    block = np.arange(64 * 48, dtype=np.float16).reshape(64, 48)  # 96-byte rows: some straddle 4 KiB buffers
    order = gguf_export._interleaved_row_order(64, 16)
    expected = block.reshape(4, 2, 8, 48).swapaxes(1, 2).reshape(64, 48)  # per head: row i of each half in turn
    np.testing.assert_array_equal(block[order], expected)
    path = _file_with_header(tmp_path, b"x" * 100)
    with StagedOutput(path, 100, size=size) as out:
        for _ in range(40):  # 40 × 6144 bytes: several buffers
            assert out.write(block, order) == block.nbytes
        out.finish()
    assert path.read_bytes() == b"x" * 100 + expected.tobytes() * 40


def test_written_with_o_direct_where_the_filesystem_takes_it(tmp_path: Path) -> None:
    path = _file_with_header(tmp_path)
    with StagedOutput(path, len(HEADER), size=ALIGN) as out:
        out.write(np.ones(5 * ALIGN, np.uint8))
        out.finish()
        assert out.direct == accepts_direct(tmp_path)
    assert path.read_bytes() == HEADER + b"\x01" * 5 * ALIGN


def test_a_filesystem_without_o_direct_gets_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staged_output, "_open_direct", lambda path: None)
    path = _file_with_header(tmp_path)
    pieces = _pieces(np.random.default_rng(1))
    with StagedOutput(path, len(HEADER), size=ALIGN) as out:
        for piece in pieces:
            out.write(piece)
        out.finish()
        assert not out.direct
    assert path.read_bytes() == HEADER + b"".join(np.ascontiguousarray(p).tobytes() for p in pieces)


def test_o_direct_refused_at_the_first_write_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening with O_DIRECT can succeed where writing then fails with EINVAL (an alignment the device will not
    take): the buffer goes out through the page cache, as does the rest."""
    path = _file_with_header(tmp_path)
    direct_fds: list[int] = []
    monkeypatch.setattr(
        staged_output, "_open_direct", lambda p: direct_fds.append(os.open(p, os.O_WRONLY)) or direct_fds[-1]
    )
    real = os.pwrite

    def refuse_direct(fd: int, data, offset: int) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse_direct)
    with StagedOutput(path, len(HEADER), size=ALIGN) as out:
        out.write(np.full(3 * ALIGN, 7, np.uint8))
        out.finish()
        assert not out.direct
    assert path.read_bytes() == HEADER + b"\x07" * 3 * ALIGN


def _disk_full(fd: int, data, offset: int) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_is_raised_while_filling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error on the writing thread surfaces in the caller when it comes back for that buffer."""
    monkeypatch.setattr(os, "pwrite", _disk_full)
    output = StagedOutput(_file_with_header(tmp_path), len(HEADER), size=ALIGN)
    with output as out, pytest.raises(OSError, match="No space"):
        out.write(np.zeros(10 * ALIGN, np.uint8))


def test_a_failed_last_write_is_raised_by_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "pwrite", _disk_full)
    with StagedOutput(_file_with_header(tmp_path), len(HEADER), size=ALIGN) as out:
        out.write(np.zeros(100, np.uint8))
        with pytest.raises(OSError, match="No space"):
            out.finish()


def test_a_header_shorter_than_it_says_is_refused(tmp_path: Path) -> None:
    path = _file_with_header(tmp_path, b"short")
    open_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(EOFError, match="holds 5 bytes"):
        StagedOutput(path, 100)
    if open_before is not None:
        assert len(os.listdir("/proc/self/fd")) == open_before, "the file it opened is closed again"


def test_an_unaligned_staging_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple"):
        StagedOutput(_file_with_header(tmp_path), 10, size=ALIGN + 1)


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_the_gguf_is_the_same_through_either_write_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str
) -> None:
    """A whole conversion, small buffers and blocks (rows and tensors across buffers), O_DIRECT and the page cache."""
    folder = build_checkpoint(tmp_path / "ckpt", weights=weights, dtype="F16", shards=2)
    monkeypatch.setattr(staged_output, "STAGING_BYTES", 2 * ALIGN)
    monkeypatch.setattr(gguf_export, "CHUNK_BYTES", 3000)
    direct = convert(folder, tmp_path / "direct.gguf", outtype="f16")
    monkeypatch.setattr(staged_output, "_open_direct", lambda path: None)
    cached = convert(folder, tmp_path / "cached.gguf", outtype="f16")
    monkeypatch.undo()
    default = convert(folder, tmp_path / "default.gguf", outtype="f16")
    assert direct.read_bytes() == cached.read_bytes() == default.read_bytes()
