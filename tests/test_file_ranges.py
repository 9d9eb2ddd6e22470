"""convert/file_ranges.py: kernel copies and whole reads give the checkpoint's exact bytes, with or without the kernel's
help, and the converter's output does not depend on which path moved a tensor."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from synatra_local.convert import file_ranges, gguf_export
from synatra_local.convert.api import convert
from synatra_local.convert.checkpoint import open_checkpoint
from synatra_local.convert.gguf_export import plan_tensors
from synatra_local.convert.tiny import build_checkpoint


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    data = np.random.default_rng(0).integers(0, 256, size=3 * 1024 * 1024 + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path, data


def _copy(source: Path, target: Path, offset: int, count: int, at: int) -> list[int]:
    steps: list[int] = []
    with file_ranges.SourceFiles() as files, target.open("r+b" if target.exists() else "w+b") as out:
        file_ranges.copy_range(files.fd(source), offset, out.fileno(), at, count, steps.append)
    return steps


def test_copy_range_copies_the_exact_bytes_in_steps(source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = source
    monkeypatch.setattr(file_ranges, "STEP_BYTES", 1 << 20)
    target = tmp_path / "out.bin"
    target.write_bytes(b"H" * 100)
    steps = _copy(path, target, 12345, 2_500_000, 100)
    assert target.read_bytes() == b"H" * 100 + data[12345 : 12345 + 2_500_000]
    assert sum(steps) == 2_500_000 and len(steps) == 3, "progress once per step"


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP])
def test_copy_range_falls_back_where_the_kernel_cannot(
    source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Older kernels refuse copies across filesystems (EXDEV) or lack the call: large reads and writes instead."""
    path, data = source
    calls: list[int] = []

    def refuse(*args: object) -> int:
        calls.append(1)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    target = tmp_path / "out.bin"
    _copy(path, target, 7, len(data) - 7, 0)
    assert target.read_bytes() == data[7:]
    assert calls == [1], "the kernel is asked once, then not again"


def test_copy_range_passes_real_disk_errors_on(source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = source

    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", disk_full)
    with pytest.raises(OSError, match="No space"):
        _copy(path, tmp_path / "out.bin", 0, 100, 0)


def test_a_short_source_is_an_error_not_a_short_copy(source, tmp_path: Path) -> None:
    path, data = source
    with pytest.raises(EOFError, match="100 bytes early"):
        _copy(path, tmp_path / "out.bin", len(data) - 50, 150, 0)
    with file_ranges.SourceFiles() as files, pytest.raises(EOFError):
        file_ranges.read_array(files.fd(path), len(data) - 8, np.dtype("<f4"), (4,))


def test_read_array_reads_the_values_at_an_offset(tmp_path: Path) -> None:
    values = np.arange(1000, dtype="<f2").reshape(10, 100)
    path = tmp_path / "values.bin"
    path.write_bytes(b"xyz" + values.tobytes())
    with file_ranges.SourceFiles() as files:
        got = file_ranges.read_array(files.fd(path), 3 + 200 * 2, np.dtype("<f2"), (3, 100))
    np.testing.assert_array_equal(got, values[2:5])


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_conversion_bytes_do_not_depend_on_the_copy_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str
) -> None:
    """Kernel copy, buffered fallback and the memory-mapped path (strided tensors) write the same GGUF."""
    folder = build_checkpoint(tmp_path / "ckpt", weights=weights, dtype="F16", shards=2)
    kernel = convert(folder, tmp_path / "kernel.gguf", outtype="f16")
    plan = plan_tensors(open_checkpoint(folder), "f16")
    copied = [gguf_export._unchanged(t) for t in plan]
    expected = [not t.permute_heads and (len(t.shape) >= 2 or t.source.dtype == "F32") for t in plan]
    assert copied == expected and any(copied), "all but q/k (reordered) and F16 norms (widened to F32)"

    def unavailable(*args: object) -> int:
        raise OSError(errno.ENOSYS, "no copy_file_range")

    with monkeypatch.context() as patch:
        patch.setattr(os, "copy_file_range", unavailable)
        buffered = convert(folder, tmp_path / "buffered.gguf", outtype="f16")
    with monkeypatch.context() as patch:
        patch.setattr(gguf_export, "_unchanged", lambda t: False)
        real_plan = gguf_export.plan_tensors

        def strided(checkpoint, outtype):  # as if every tensor were a strided view: the memory map serves it
            from dataclasses import replace

            return [replace(t, source=replace(t.source, offset=None)) for t in real_plan(checkpoint, outtype)]

        patch.setattr(gguf_export, "plan_tensors", strided)
        mapped = convert(folder, tmp_path / "mapped.gguf", outtype="f16")
    assert kernel.read_bytes() == buffered.read_bytes() == mapped.read_bytes()


def test_an_intermediate_is_not_fsynced_but_an_output_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synatra_local.convert.gguf_export import write_gguf

    folder = build_checkpoint(tmp_path / "ckpt", weights="safetensors")
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    write_gguf(open_checkpoint(folder), tmp_path / "a.gguf", outtype="f16", durable=False)
    assert synced == []
    write_gguf(open_checkpoint(folder), tmp_path / "b.gguf", outtype="f16")
    assert len(synced) == 1
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
