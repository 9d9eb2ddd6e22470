"""Read and write `.safetensors` files with numpy alone, memory-mapping tensor data instead of loading it.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw little-endian data. Parsing it here keeps the converter free of torch and lets a
7B checkpoint be converted without holding it in RAM. The small helpers shared with the `.bin` reader
(lazy file map, dtype resolution, streaming writes) live here too.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from synatra_local.core.atomic import atomic_output
from synatra_local.core.errors import CheckpointError

from .tensors import DTYPE_SIZES, NUMPY_STORAGE, SourceTensor

REDOWNLOAD = "re-download this file"
SUPPORTED = ", ".join(NUMPY_STORAGE)
# The reference implementation refuses headers above 100 MB; a longer one means this is not safetensors.
MAX_HEADER_BYTES = 100_000_000
WRITE_CHUNK_BYTES = 64 << 20


class FileMap:
    """One read-only memory map per file, made on first `load()`, so reading headers costs no tensor I/O."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._array: np.memmap | None = None

    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._array


def contiguous_loader(
    fmap: FileMap, start: int, dtype: str, shape: tuple[int, ...]
) -> Callable[[], np.ndarray]:
    """A `load()` giving a memmap view of `shape` at byte `start`; a factory, so loop variables bind early."""
    np_dtype = NUMPY_STORAGE[dtype]
    nbytes = math.prod(shape) * np_dtype.itemsize

    def load() -> np.ndarray:
        return fmap.array()[start : start + nbytes].view(np_dtype).reshape(shape)

    return load


def resolve_dtype(name: str, array: np.ndarray, requested: str | None) -> str:
    """The checkpoint dtype to write `array` as; BF16 arrives as uint16 bits, since numpy has no bfloat16."""
    if requested is None:
        requested = {"float32": "F32", "float16": "F16"}.get(array.dtype.name)
        if requested is None:
            raise ValueError(f"{name}: numpy dtype {array.dtype} needs an explicit dtype ({SUPPORTED})")
    if requested not in NUMPY_STORAGE:
        raise ValueError(f"{name}: dtype {requested} is not one of {SUPPORTED}")
    if requested == "BF16" and array.dtype != np.uint16:
        raise ValueError(f"{name}: BF16 tensors are passed as uint16 bit patterns, got {array.dtype}")
    if requested != "BF16" and array.dtype.kind != "f":
        raise ValueError(f"{name}: {requested} tensors are passed as float arrays, got {array.dtype}")
    return requested


def write_array_bytes(out: BinaryIO, array: np.ndarray, dtype: str) -> None:
    """Stream one tensor's little-endian bytes, a slice of its first axis at a time.

    Only one slice is ever converted or copied, so even a strided or float64 source costs little memory.
    """
    target = NUMPY_STORAGE[dtype]
    array = np.asarray(array).reshape(-1) if np.ndim(array) == 0 else np.asarray(array)
    step = max(1, WRITE_CHUNK_BYTES // max(1, math.prod(array.shape[1:]) * target.itemsize))
    for begin in range(0, array.shape[0], step):
        out.write(np.ascontiguousarray(array[begin : begin + step], dtype=target).reshape(-1).view(np.uint8))


def read_safetensors(path: Path) -> dict[str, SourceTensor]:
    """Describe every tensor of a safetensors file, in data order, without reading any tensor bytes."""
    path = Path(path)
    header, data_start, file_size = _read_header(path)
    fmap = FileMap(path)
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = _parse_entry(path, name, info)
        if data_start + end > file_size:
            raise CheckpointError(
                f"{path.name}: tensor {name} ends at byte {data_start + end} but the file has only "
                f"{file_size} bytes (truncated download)",
                fix=REDOWNLOAD,
            )
        entries.append((begin, name, dtype, shape))
    entries.sort(key=lambda entry: entry[0])
    tensors = {}
    for begin, name, dtype, shape in entries:
        load = contiguous_loader(fmap, data_start + begin, dtype, shape)
        tensors[name] = SourceTensor(name, dtype, shape, path, load, offset=data_start + begin)
    return tensors


def _read_header(path: Path) -> tuple[dict, int, int]:
    """The parsed JSON header, where tensor data starts, and the file size; refuses short or corrupt files."""
    try:
        file_size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            raw = f.read(length) if length is not None and length <= MAX_HEADER_BYTES else b""
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist", fix="check the checkpoint folder") from None
    if length is None or 8 + length > file_size:
        raise CheckpointError(
            f"{path.name}: header runs past the end of the file (truncated)", fix=REDOWNLOAD
        )
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path.name}: header length {length} is implausible (not safetensors)", fix=REDOWNLOAD
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name}: header is not valid JSON ({exc})", fix=REDOWNLOAD) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: header is not a JSON object", fix=REDOWNLOAD)
    return header, 8 + length, file_size


def _parse_entry(path: Path, name: str, info: object) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """Validate one header entry: a supported dtype, and a byte range exactly the size of its shape."""
    corrupt = CheckpointError(f"{path.name}: header entry for tensor {name} is malformed", fix=REDOWNLOAD)
    if not isinstance(info, dict):
        raise corrupt
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise corrupt
    if dtype not in NUMPY_STORAGE:
        raise CheckpointError(
            f"{path.name}: tensor {name} has dtype {dtype}, which the converter does not handle "
            f"(only {SUPPORTED})",
            fix="use a checkpoint saved in float32, float16 or bfloat16",
        )
    if len(offsets) != 2 or not all(type(v) is int and v >= 0 for v in [*shape, *offsets]):
        raise corrupt
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise corrupt
    return dtype, tuple(shape), (begin, end)


def write_safetensors(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    dtypes: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file the reference library reads, streaming one tensor at a time, atomically."""
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata maps strings to strings")
        header["__metadata__"] = dict(metadata)
    plan = []
    offset = 0
    for name, array in tensors.items():
        dtype = resolve_dtype(name, array, (dtypes or {}).get(name))
        nbytes = array.size * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + nbytes]}
        plan.append((array, dtype))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_output(path, force=True) as partial, partial.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for array, dtype in plan:
            write_array_bytes(out, array, dtype)
