"""convert/file_ranges.py: mapped blocks are the checkpoint's exact bytes, read one ahead and dropped behind; output
written through the page cache is written back as it goes, with or without the kernel's help; the GGUF does not
depend on which path moved a tensor."""

from __future__ import annotations

import errno
import os
import sys
import time
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


def _read_all(files: file_ranges.SourceFiles, ranges: list) -> list[bytes]:
    got = []
    for raw in files.blocks(ranges):
        assert raw.dtype == np.uint8
        got.append(raw.tobytes())
        del raw
    return got


def test_blocks_are_the_exact_bytes_at_any_offset(source, tmp_path: Path) -> None:
    path, data = source
    other = tmp_path / "other.bin"
    other.write_bytes(data[::-1])
    ranges = [(path, 0, 10), (path, 12345, 2_500_000), (other, 4096, 4096), (path, len(data) - 17, 17), (path, 5, 0)]
    with file_ranges.SourceFiles() as files:
        got = _read_all(files, ranges)
    assert got == [(data if p == path else data[::-1])[o : o + n] for p, o, n in ranges]


def test_block_values_at_an_offset(tmp_path: Path) -> None:
    values = np.arange(1000, dtype="<f2").reshape(10, 100)
    path = tmp_path / "values.bin"
    path.write_bytes(b"xyz" + values.tobytes())
    with file_ranges.SourceFiles() as files:
        (raw,) = files.blocks([(path, 3 + 200 * 2, 3 * 200)])
        got = raw.view("<f2").reshape(3, 100).copy()
        del raw
    np.testing.assert_array_equal(got, values[2:5])


def test_a_short_source_is_an_error_at_its_range_not_a_short_read(source) -> None:
    path, data = source
    with file_ranges.SourceFiles() as files:
        blocks = files.blocks([(path, 0, 100), (path, len(data) - 50, 150)])
        assert next(blocks).tobytes() == data[:100]
        with pytest.raises(EOFError, match="100 bytes early"):
            next(blocks)


@pytest.fixture
def watched_maps(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every map the reader makes, in order."""
    mappings: list = []
    real_map = file_ranges._map_populated
    monkeypatch.setattr(file_ranges, "_map_populated", lambda *a: mappings.append(real_map(*a)) or mappings[-1])
    return mappings


def test_the_next_block_is_read_while_this_one_is_used(
    source, watched_maps: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One range read ahead, no more; each map is closed before its range is dropped from the cache."""
    path, data = source
    ranges = [(path, i * 100_000, 100_000) for i in range(6)]
    released: list[tuple[int, int]] = []
    with file_ranges.SourceFiles() as files:
        real_release = files.release

        def release(p: Path, offset: int, count: int) -> None:
            assert watched_maps[offset // 100_000].closed, "unmapped before the range is dropped"
            released.append((offset, count))
            real_release(p, offset, count)

        monkeypatch.setattr(files, "release", release)
        i = -1
        for raw in files.blocks(ranges):  # not enumerate(): its reused tuple would hold the view a step longer
            i += 1
            assert raw.tobytes() == data[i * 100_000 : (i + 1) * 100_000]
            del raw
            if i + 1 < len(ranges):
                _wait_for(lambda i=i: len(watched_maps) == i + 2)  # the next range is mapped meanwhile
            time.sleep(0.02)
            assert len(watched_maps) == min(i + 2, len(ranges)), "one range ahead, not more"
            assert sum(not m.closed for m in watched_maps) <= 2
    assert released == [(o, n) for _, o, n in ranges]
    assert all(m.closed for m in watched_maps)


def test_stopping_early_closes_the_block_read_ahead(
    source, watched_maps: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = source
    released: list[int] = []
    with file_ranges.SourceFiles() as files:
        real_release = files.release
        monkeypatch.setattr(
            files, "release", lambda p, offset, count: (released.append(offset), real_release(p, offset, count))
        )
        blocks = files.blocks([(path, i * 4096, 4096) for i in range(5)])
        next(blocks)
        _wait_for(lambda: len(watched_maps) == 2)
        blocks.close()
    assert len(watched_maps) == 2 and all(m.closed for m in watched_maps)
    assert released == [0, 4096]


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_conversion_bytes_do_not_depend_on_the_read_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str
) -> None:
    """Ranges mapped block by block and the whole-tensor memory map (strided torch views) write the same GGUF."""
    folder = build_checkpoint(tmp_path / "ckpt", weights=weights, dtype="F16", shards=2)
    monkeypatch.setattr(gguf_export, "CHUNK_BYTES", 4096)  # many blocks per tensor, q/k blocks of whole heads
    blocks = convert(folder, tmp_path / "blocks.gguf", outtype="f16")
    with monkeypatch.context() as patch:
        real_plan = gguf_export.plan_tensors

        def strided(checkpoint, outtype):  # as if every tensor were a strided view: the memory map serves it
            from dataclasses import replace

            return [replace(t, source=replace(t.source, offset=None)) for t in real_plan(checkpoint, outtype)]

        patch.setattr(gguf_export, "plan_tensors", strided)
        mapped = convert(folder, tmp_path / "mapped.gguf", outtype="f16")
    assert blocks.read_bytes() == mapped.read_bytes()
    plan = plan_tensors(open_checkpoint(folder), "f16")
    assert any(t.permute_heads for t in plan) and all(t.source.offset is not None for t in plan)


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


def _resident_fraction(path: Path, start: int = 0, end: int | None = None) -> float:
    """Share of a file's pages in `[start, end)` that sit in the page cache (mincore over a read-only map)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    end = size if end is None else end
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with path.open("rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value), "mmap failed"
        try:
            pages = (size + page - 1) // page
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            flags = np.frombuffer(vector.raw, dtype=np.uint8)[start // page : (end + page - 1) // page]
        finally:
            libc.munmap(address, size)
    return float(np.mean(flags & 1))


def _page_cache_is_droppable(folder: Path) -> bool:
    """tmpfs keeps every page it holds (its pages are the file): there is no cache to stream through."""
    best = ""
    kind = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if str(folder.resolve()).startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind not in ("tmpfs", "ramfs")


linux_page_cache = pytest.mark.skipif(
    not sys.platform.startswith("linux") or file_ranges._sync_file_range is None,
    reason="sync_file_range and POSIX_FADV_DONTNEED are Linux calls; elsewhere WriteBehind does nothing",
)


@linux_page_cache
def test_write_behind_leaves_the_bytes_on_disk_and_out_of_the_cache(tmp_path: Path) -> None:
    """A streamed write keeps at most the window cached; a plain write of the same bytes stays cached whole."""
    if not _page_cache_is_droppable(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs, whose pages cannot be dropped; run with --basetemp on a disk")
    data = np.random.default_rng(1).integers(0, 256, size=48 << 20, dtype=np.uint8)
    plain, streamed = tmp_path / "plain.bin", tmp_path / "streamed.bin"
    plain.write_bytes(data.tobytes())
    window = 8 << 20
    with streamed.open("wb") as out:
        behind = file_ranges.WriteBehind(out.fileno(), window=window)
        for start in range(0, len(data), 3 << 20):  # steps that end mid-page as well as on pages
            out.write(data[start : start + (3 << 20) + 5].tobytes()[: min(3 << 20, len(data) - start)])
            out.flush()
            behind.written_to(out.tell())
    assert streamed.read_bytes() == plain.read_bytes()  # (this read brings it back; residency is measured below)
    os.posix_fadvise(os.open(streamed, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: droppable now

    with streamed.open("wb") as out:  # again, now measuring what stays cached
        behind = file_ranges.WriteBehind(out.fileno(), window=window)
        for start in range(0, len(data), 3 << 20):
            out.write(data[start : start + (3 << 20)].tobytes())
            out.flush()
            behind.written_to(out.tell())
        left_cached = _resident_fraction(streamed, 0, len(data) - window - (4 << 20))
    assert _resident_fraction(plain) > 0.9, "a plain write stays in the page cache"
    assert left_cached < 0.05, f"{left_cached:.0%} of the streamed bytes behind the window are still cached"


def test_write_behind_hands_on_whole_pages_in_order_and_waits_a_window_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []
    drops: list[tuple[int, int]] = []
    monkeypatch.setattr(file_ranges, "_sync_file_range", object())
    monkeypatch.setattr(
        file_ranges, "_sync_range", lambda fd, offset, count, flags: calls.append((offset, count, flags))
    )
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, count, advice: drops.append((offset, count)))
    page, mib = file_ranges._PAGE, 1 << 20
    behind = file_ranges.WriteBehind(3, start=100, window=16 * mib)
    behind.written_to(1000)  # under the minimum: nothing yet
    assert calls == []
    for end in range(5 * mib + 7, 60 * mib, 5 * mib):
        behind.written_to(end)
    writes = [(o, n) for o, n, flags in calls if flags == file_ranges._SYNC_WRITE]
    waits = [(o, n) for o, n, flags in calls if flags != file_ranges._SYNC_WRITE]
    assert writes[0][0] == 100 and all((o + n) % page == 0 for o, n in writes), "whole pages only"
    assert all(a[0] + a[1] == b[0] for a, b in zip(writes, writes[1:], strict=False)), "contiguous, in order"
    assert waits == drops and waits[0][0] == 100
    assert all(a[0] + a[1] == b[0] for a, b in zip(waits, waits[1:], strict=False))
    handed = writes[-1][0] + writes[-1][1]
    waited = waits[-1][0] + waits[-1][1]
    assert handed - waited == 16 * mib, "a window of bytes in flight, the older ones waited for and dropped"


@pytest.mark.parametrize(("code", "raised"), [(errno.EINVAL, False), (errno.ENOSYS, False), (errno.EIO, True)])
def test_write_behind_gives_way_where_a_filesystem_cannot_but_not_on_disk_errors(
    monkeypatch: pytest.MonkeyPatch, code: int, raised: bool
) -> None:
    calls: list[int] = []

    def refuse(fd: int, offset: int, count: int, flags: int) -> None:
        calls.append(offset)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(file_ranges, "_sync_file_range", object())
    monkeypatch.setattr(file_ranges, "_sync_range", refuse)
    behind = file_ranges.WriteBehind(3)
    if raised:
        with pytest.raises(OSError, match="Input/output"):
            behind.written_to(8 << 20)
        return
    behind.written_to(8 << 20)
    behind.written_to(16 << 20)
    assert calls == [0], "asked once, then left to the kernel's own writeback"


@linux_page_cache
def test_convert_streams_through_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a conversion neither the shards nor the output (behind the last window) are left in the page cache."""
    if not _page_cache_is_droppable(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs, whose pages cannot be dropped; run with --basetemp on a disk")
    folder = build_checkpoint(tmp_path / "ckpt", weights="bin", dtype="F16", shards=2)
    for shard in folder.glob("*.bin"):
        with shard.open("rb") as f:
            os.fsync(f.fileno())  # clean, as a downloaded checkpoint's pages are (dirty pages cannot be dropped)
        shard.read_bytes()  # cached before: the conversion is what drops them
        assert _resident_fraction(shard) > 0.9
    window = 1 << 20
    monkeypatch.setattr(file_ranges, "WRITE_BEHIND_BYTES", window)
    monkeypatch.setattr(file_ranges, "_SYNC_MIN_BYTES", 256 << 10)
    output = convert(folder, tmp_path / "out.gguf", outtype="f16")
    for shard in folder.glob("*.bin"):
        assert _resident_fraction(shard) < 0.2, f"{shard.name} left in the page cache"
    size = output.stat().st_size
    assert size > 8 * window
    assert _resident_fraction(output, 0, size - 2 * window) < 0.2, "the output's written bytes left cached"


@linux_page_cache
def test_prefetch_asks_for_the_first_bytes_of_the_ranges_only(tmp_path: Path) -> None:
    """While the converter builds its header, the disk reads the first `limit` bytes of the ranges, no more."""
    if not _page_cache_is_droppable(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs, whose pages cannot be dropped; run with --basetemp on a disk")
    mib = 1 << 20
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    for path in (first, second):
        path.write_bytes(np.random.default_rng(3).integers(0, 256, size=8 * mib, dtype=np.uint8).tobytes())
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        assert _resident_fraction(path) < 0.05
    with file_ranges.SourceFiles() as files:
        files.prefetch([(first, 2 * mib, 4 * mib), (second, 0, 8 * mib)], limit=6 * mib)
    # the reads are asked for, not waited on: they land in the cache as the disk answers
    _wait_for(lambda: min(_resident_fraction(first, 2 * mib, 6 * mib), _resident_fraction(second, 0, 2 * mib)) > 0.9)
    assert _resident_fraction(second, 3 * mib, 8 * mib) < 0.3, "read beyond the limit"  # (kernel read-ahead aside)


def test_prefetch_of_a_missing_file_is_left_to_the_read_that_names_it(tmp_path: Path) -> None:
    with file_ranges.SourceFiles() as files:
        files.prefetch([(tmp_path / "absent.bin", 0, 100)])
    with file_ranges.SourceFiles() as files, pytest.raises(FileNotFoundError, match="absent.bin"):
        next(files.blocks([(tmp_path / "absent.bin", 0, 100)]))
