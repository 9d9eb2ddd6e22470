"""The numpy-only safetensors reader and writer: exact values, lazy memory maps, clear refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from synatra_local.convert import safetensors_file
from synatra_local.convert.safetensors_file import read_safetensors, write_safetensors
from synatra_local.core.errors import CheckpointError

REAL_MEMMAP = np.memmap
BF16_SPECIAL = np.array([0x7FC1, 0xFFFF, 0x7F81, 0x8000, 0x0000, 0x7F80, 0xFF80, 0x0001], dtype=np.uint16)


def random_tensor(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "BF16":
        return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return rng.standard_normal(shape).astype({"F32": np.float32, "F16": np.float16}[dtype])


def same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    same_layout = actual.dtype == expected.dtype and actual.shape == expected.shape
    return same_layout and actual.tobytes() == expected.tobytes()


def raw_file(path: Path, header: dict, data: bytes) -> None:
    """A safetensors file built by hand, for inputs our writer would never produce."""
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_round_trip_each_dtype(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(1)
    tensors = {"w": random_tensor(rng, dtype, (5, 7)), "v": random_tensor(rng, dtype, (3,))}
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors, {name: dtype for name in tensors})
    read = read_safetensors(path)
    assert list(read) == ["w", "v"]
    for name, source in read.items():
        assert (source.dtype, source.shape, source.file) == (dtype, tensors[name].shape, path)
        assert source.nbytes == tensors[name].nbytes
        assert same_bits(source.load(), tensors[name])


def test_mixed_dtypes_and_bf16_special_bits(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    tensors = {
        "norm": random_tensor(rng, "F32", (9,)),
        "embed": random_tensor(rng, "F16", (4, 3)),
        "special": BF16_SPECIAL,
        "empty": np.zeros((0, 4), dtype=np.float16),
    }
    path = tmp_path / "mixed.safetensors"
    write_safetensors(path, tensors, {"special": "BF16"})
    read = read_safetensors(path)
    assert [(n, s.dtype) for n, s in read.items()] == [
        ("norm", "F32"),
        ("embed", "F16"),
        ("special", "BF16"),
        ("empty", "F16"),
    ]
    for name, array in tensors.items():
        assert same_bits(read[name].load(), array), name


def test_strided_float64_source_is_converted_slice_by_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safetensors_file, "WRITE_CHUNK_BYTES", 24)  # a few rows per slice
    source = np.random.default_rng(5).standard_normal((6, 9)).T  # float64, not C-contiguous
    path = tmp_path / "converted.safetensors"
    write_safetensors(path, {"w": source, "s": np.float64(1.5)}, {"w": "F32", "s": "F16"})
    read = read_safetensors(path)
    assert same_bits(read["w"].load(), source.astype(np.float32))
    assert read["s"].shape == () and read["s"].load().tolist() == 1.5


def test_header_is_space_padded_to_8_bytes_and_keeps_metadata(tmp_path: Path) -> None:
    path = tmp_path / "padded.safetensors"
    write_safetensors(path, {"abc": np.ones(3, np.float32)}, metadata={"format": "pt"})
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header_bytes = raw[8 : 8 + length]
    assert length % 8 == 0 and header_bytes.endswith(b"}" + b" " * (length - len(header_bytes.rstrip())))
    header = json.loads(header_bytes)
    assert header["__metadata__"] == {"format": "pt"}
    assert header["abc"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert len(raw) == 8 + length + 12


def test_loading_is_lazy_and_maps_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lazy.safetensors"
    write_safetensors(path, {"a": np.arange(6, dtype=np.float32), "b": np.arange(4, dtype=np.float16)})
    calls: list[object] = []

    def counting_memmap(*args: object, **kwargs: object) -> np.memmap:
        calls.append(args[0])
        return REAL_MEMMAP(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", counting_memmap)
    read = read_safetensors(path)
    assert calls == []
    arrays = [source.load() for source in read.values()]
    assert calls == [path]
    assert all(isinstance(a, REAL_MEMMAP) for a in arrays)
    assert arrays[1].tolist() == [0, 1, 2, 3]


def test_tensors_come_back_in_data_order_not_header_order(tmp_path: Path) -> None:
    path = tmp_path / "order.safetensors"
    header = {
        "second": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        "first": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    raw_file(path, header, np.array([1.0, 2.0], dtype=np.float32).tobytes())
    read = read_safetensors(path)
    assert list(read) == ["first", "second"]
    assert read["second"].load().tolist() == [2.0]


def test_unsupported_dtype_names_the_tensor_and_dtype(tmp_path: Path) -> None:
    path = tmp_path / "ints.safetensors"
    raw_file(path, {"position_ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(CheckpointError) as caught:
        read_safetensors(path)
    assert all(word in caught.value.message for word in ("ints.safetensors", "position_ids", "I64"))


@pytest.mark.parametrize("keep", [4, 8 + 10, -4])
def test_truncated_file_asks_for_a_redownload(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "model-00002-of-00003.safetensors"
    write_safetensors(path, {"w": np.ones((4, 4), dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match="truncated") as caught:
        read_safetensors(path)
    assert path.name in caught.value.message and "re-download" in (caught.value.fix or "")


def test_offsets_that_disagree_with_the_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    raw_file(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(16))
    with pytest.raises(CheckpointError, match="malformed"):
        read_safetensors(path)


def test_not_json_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[" + bytes(8))
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        read_safetensors(path)


def test_reference_library_reads_what_we_write(tmp_path: Path) -> None:
    """Extra cross-check against the reference implementation, where it happens to be installed."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(4)
    tensors = {"a": random_tensor(rng, "F32", (3, 5)), "b": random_tensor(rng, "F16", (7,))}
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    loaded = safetensors_numpy.load_file(str(path))
    assert all(same_bits(loaded[name], tensors[name]) for name in tensors)
    theirs = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(tensors, str(theirs))
    assert all(same_bits(s.load(), tensors[n]) for n, s in read_safetensors(theirs).items())
