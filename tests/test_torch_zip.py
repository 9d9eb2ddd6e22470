"""The torch-free `.bin` reader and writer: exact values, memory-mapped tensors, hostile pickles refused."""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from synatra_local.convert.torch_zip import read_torch_checkpoint, write_torch_checkpoint
from synatra_local.core.errors import CheckpointError

DATA = Path(__file__).parent / "data"
REAL_MEMMAP = np.memmap
NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
# bfloat16 bits that a float round trip would disturb: NaN payloads, signed zero, infinities, subnormals.
BF16_SPECIAL = np.array(
    [0x7FC1, 0xFFFF, 0x7F81, 0x8000, 0x0000, 0x7F80, 0xFF80, 0x0001, 0x807F], dtype=np.uint16
)


def memmap_backed(array: object) -> bool:
    while array is not None:
        if isinstance(array, REAL_MEMMAP):
            return True
        array = getattr(array, "base", None)
    return False


def same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    return (
        actual.dtype == expected.dtype
        and actual.shape == expected.shape
        and np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()
    )


def random_tensor(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "BF16":
        return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return rng.standard_normal(shape).astype(NUMPY_DTYPES[dtype])


def rezip(source: Path, target: Path, replace: dict[str, bytes] | None = None, deflate: str = "") -> None:
    """Copy a checkpoint's members into a new zip, replacing some and deflating those containing `deflate`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = (replace or {}).get(info.filename, old.read(info))
            method = zipfile.ZIP_DEFLATED if deflate and deflate in info.filename else zipfile.ZIP_STORED
            new.writestr(info.filename, data, compress_type=method)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_round_trip_each_dtype(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(1)
    tensors = {"w": random_tensor(rng, dtype, (5, 7)), "v": random_tensor(rng, dtype, (3,))}
    path = tmp_path / "pytorch_model.bin"
    write_torch_checkpoint(path, tensors, {name: dtype for name in tensors})
    read = read_torch_checkpoint(path)
    assert list(read) == ["w", "v"]
    for name, source in read.items():
        assert (source.dtype, source.shape, source.file) == (dtype, tensors[name].shape, path)
        assert same_bits(source.load(), tensors[name])


def test_mixed_dtypes_keep_file_order_and_infer_float_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    names = ["z.first", "a.second", "m.third", "b.fourth"]
    dtypes = ["F16", "BF16", "F32", "F16"]
    shapes = [(4, 2 + i) for i in range(len(names))]
    tensors = {n: random_tensor(rng, d, s) for n, d, s in zip(names, dtypes, shapes, strict=True)}
    tensors["scalar"] = np.array(2.5, dtype=np.float32)
    path = tmp_path / "mixed.bin"
    write_torch_checkpoint(path, tensors, {"a.second": "BF16"})
    read = read_torch_checkpoint(path)
    assert list(read) == [*names, "scalar"]
    assert [read[n].dtype for n in names] == dtypes
    assert read["scalar"].shape == () and read["scalar"].load()[()] == 2.5
    for name in names:
        assert same_bits(read[name].load(), tensors[name])


def test_bf16_special_bit_patterns_survive(tmp_path: Path) -> None:
    path = tmp_path / "bf16.bin"
    write_torch_checkpoint(path, {"special": BF16_SPECIAL}, {"special": "BF16"})
    assert same_bits(read_torch_checkpoint(path)["special"].load(), BF16_SPECIAL)


def test_written_archive_is_aligned_and_stored_like_torch(tmp_path: Path) -> None:
    path = tmp_path / "aligned.bin"
    write_torch_checkpoint(path, {f"t{i}": np.ones(i + 1, dtype=np.float16) for i in range(5)})
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names[0] == "archive/data.pkl" and "archive/version" in names
        assert archive.read("archive/byteorder") == b"little"
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
            assert info.compress_type == zipfile.ZIP_STORED
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    assert not list(tmp_path.glob("*.part")), "the temporary file must be renamed away"


def test_zip64_members_stay_aligned_and_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members over 2 GiB get zip64 headers; a lowered limit exercises that path with small tensors."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    tensors = {"big": np.arange(3000, dtype=np.float32), "small": np.arange(5, dtype=np.float16)}
    path = tmp_path / "zip64.bin"
    write_torch_checkpoint(path, tensors)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    assert extra_len >= 20 and (info.header_offset + 30 + name_len + extra_len) % 64 == 0
    read = read_torch_checkpoint(path)
    assert all(same_bits(read[name].load(), tensors[name]) for name in tensors)


def test_reads_real_torch_save_output_bit_exactly() -> None:
    """The fixture was written by torch.save itself (tests/data/make_torch_fixture.py); no torch needed."""
    read = read_torch_checkpoint(DATA / "torch_saved_state_dict.bin")
    expected = np.load(DATA / "torch_saved_state_dict.npz")
    assert list(read) == expected.files
    for name, source in read.items():
        want = expected[name]
        assert source.dtype == {"float32": "F32", "float16": "F16", "uint16": "BF16"}[want.dtype.name], name
        assert same_bits(source.load(), want), name
    transposed = read["model.bf16.transposed"].load()
    assert not transposed.flags.c_contiguous, "a transposed tensor is a strided view, not a copy"
    assert np.shares_memory(transposed, read["model.bf16.weight"].load())
    assert np.shares_memory(read["lm_head.weight"].load(), read["model.f16.embed_tokens.weight"].load())
    assert memmap_backed(transposed) and memmap_backed(read["model.f32.rows_3_to_9"].load())


def test_reading_maps_nothing_until_load_then_maps_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lazy.bin"
    write_torch_checkpoint(path, {"a": np.arange(6, dtype=np.float32), "b": np.arange(4, dtype=np.float16)})
    calls: list[object] = []

    def counting_memmap(*args: object, **kwargs: object) -> np.memmap:
        calls.append(args[0])
        return REAL_MEMMAP(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", counting_memmap)
    read = read_torch_checkpoint(path)
    assert calls == []
    arrays = [source.load() for source in read.values()] + [read["a"].load()]
    assert calls == [path]
    assert all(memmap_backed(a) for a in arrays)
    assert arrays[0].tolist() == list(range(6))


def payload(module: str, name: str, args: tuple) -> bytes:
    """A pickle calling module.name(*args) when loaded, via a protocol-0 GLOBAL as an attacker would."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1] + b"R."


def hostile_calls(marker: Path) -> list[tuple[str, str, tuple]]:
    code = f"open({str(marker)!r}, 'w').close()"
    calls = [
        ("os", "system", (f"touch '{marker}'",)),
        ("builtins", "exec", (code,)),
        ("builtins", "eval", (code,)),
        ("subprocess", "Popen", ([sys.executable, "-c", code],)),
    ]
    return calls + ([("posix", "system", (f"touch '{marker}'",))] if sys.platform != "win32" else [])


@pytest.mark.parametrize("index", range(5))
def test_hostile_pickle_is_refused_without_running(tmp_path: Path, index: int) -> None:
    marker = tmp_path / "pwned"
    calls = hostile_calls(marker)
    if index >= len(calls):
        pytest.skip("posix.system does not exist on this platform")
    module, name, args = calls[index]
    hostile = payload(module, name, args)

    result = pickle.loads(hostile)  # deliberately: proves the payload is live before our reader sees it
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists(), "the payload must really run under plain pickle, or the test proves nothing"
    marker.unlink()

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", hostile)
        archive.writestr("archive/byteorder", b"little")
    with pytest.raises(CheckpointError) as caught:
        read_torch_checkpoint(path)
    assert f"{module}.{name}" in str(caught.value) and path.name in str(caught.value)
    assert not marker.exists()


def test_truncated_zip_asks_for_a_redownload(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model-00001-of-00002.bin"
    write_torch_checkpoint(path, {"w": np.zeros((64, 64), dtype=np.float32)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as caught:
        read_torch_checkpoint(path)
    assert path.name in caught.value.message and "re-download" in (caught.value.fix or "")


def test_compressed_tensor_member_is_refused(tmp_path: Path) -> None:
    source, path = tmp_path / "stored.bin", tmp_path / "deflated.bin"
    write_torch_checkpoint(source, {"w": np.zeros(100, dtype=np.float32)})
    rezip(source, path, deflate="/data/")
    with pytest.raises(CheckpointError, match="compressed") as caught:
        read_torch_checkpoint(path)
    assert path.name in caught.value.message


def test_legacy_pickle_file_is_refused_with_a_resave_hint(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"
    legacy = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, legacy, protocol=2)  # torch<1.6 files open with this magic number
    path.write_bytes(legacy.getvalue() + b"rest of a legacy checkpoint")
    with pytest.raises(CheckpointError, match="legacy") as caught:
        read_torch_checkpoint(path)
    assert "1.6" in (caught.value.fix or "")


def test_missing_storage_member_is_named(tmp_path: Path) -> None:
    source, path = tmp_path / "whole.bin", tmp_path / "partial.bin"
    write_torch_checkpoint(source, {"w": np.zeros(4, dtype=np.float32)})
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            if info.filename != "archive/data/0":
                new.writestr(info.filename, old.read(info))
    with pytest.raises(CheckpointError, match="archive/data/0"):
        read_torch_checkpoint(path)


def test_storage_shorter_than_its_tensor_is_refused(tmp_path: Path) -> None:
    source, path = tmp_path / "whole.bin", tmp_path / "short.bin"
    write_torch_checkpoint(source, {"w": np.zeros(16, dtype=np.float32)})
    rezip(source, path, replace={"archive/data/0": bytes(8)})
    with pytest.raises(CheckpointError, match="shorter"):
        read_torch_checkpoint(path)


def test_big_endian_checkpoint_is_refused(tmp_path: Path) -> None:
    source, path = tmp_path / "little.bin", tmp_path / "big.bin"
    write_torch_checkpoint(source, {"w": np.zeros(4, dtype=np.float32)})
    rezip(source, path, replace={"archive/byteorder": b"big"})
    with pytest.raises(CheckpointError, match="big-endian"):
        read_torch_checkpoint(path)


def test_git_lfs_pointer_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 14000000000\n")
    with pytest.raises(CheckpointError, match="LFS"):
        read_torch_checkpoint(path)


def test_writer_refuses_bf16_given_as_floats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        write_torch_checkpoint(tmp_path / "x.bin", {"w": np.zeros(2, np.float32)}, {"w": "BF16"})
    assert not list(tmp_path.iterdir())


def test_torch_load_reads_what_we_write(tmp_path: Path) -> None:
    """Extra cross-check against torch itself, where torch happens to be installed."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    tensors = {
        "f32": random_tensor(rng, "F32", (3, 5)),
        "f16": random_tensor(rng, "F16", (7,)),
        "bf16": np.concatenate([BF16_SPECIAL, random_tensor(rng, "BF16", (7,))]).reshape(4, 4),
    }
    path = tmp_path / "ours.bin"
    write_torch_checkpoint(path, tensors, {"bf16": "BF16"})
    for mmap in (False, True):
        state = torch.load(path, weights_only=True, mmap=mmap)
        assert list(state) == list(tensors)
        assert state["bf16"].dtype == torch.bfloat16
        assert same_bits(state["bf16"].view(torch.int16).numpy().view(np.uint16), tensors["bf16"])
        assert same_bits(state["f32"].numpy(), tensors["f32"])
        assert same_bits(state["f16"].numpy(), tensors["f16"])
