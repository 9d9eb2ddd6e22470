"""Read and write PyTorch `.bin` checkpoints (torch>=1.6 zip format) without torch and without unsafe pickle.

A `.bin` is a zip archive: `<prefix>/data.pkl` pickles the state dict and each `<prefix>/data/<key>` member
holds one raw storage. Unpickling arbitrary globals runs arbitrary code, so only the few torch names a state
dict needs are admitted, each replaced by a harmless stand-in; tensor bytes stay on disk, memory-mapped.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synatra_local.core.atomic import atomic_output
from synatra_local.core.errors import CheckpointError

from .safetensors_file import (
    REDOWNLOAD,
    SUPPORTED,
    FileMap,
    contiguous_loader,
    resolve_dtype,
    write_array_bytes,
)
from .tensors import DTYPE_SIZES, NUMPY_STORAGE, SourceTensor

# Storage classes a state dict may name; only the first three are convertible, the rest get a clear refusal.
STORAGE_DTYPES = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}  # fmt: skip
TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
STORAGE_NAMES = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}
ALIGNMENT = 64  # torch aligns every member's data like this, so the file can be memory-mapped


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for torch.FloatStorage & co. or a torch dtype; slots, so pickle BUILD cannot alter it."""

    dtype: str


@dataclass(frozen=True, slots=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: object
    offset: object
    shape: tuple
    stride: tuple


def _rebuild_tensor(storage: object, offset: object, size: Any, stride: Any, *_unused: object) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: object, *_unused: object) -> object:
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in {**STORAGE_DTYPES, **TORCH_DTYPES}.items()},
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; any other global (os.system, builtins.eval, ...) aborts the load."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise CheckpointError(
                f"{self.path.name}: pickle refers to {module}.{name}, which a weights file never needs; "
                "refusing to load it (the file may be malicious or not a state dict)",
                fix="use a checkpoint from a trusted source, preferably its .safetensors version",
            )
        return ALLOWED_GLOBALS[(module, name)]

    def persistent_load(self, pid: Any) -> _Storage:
        """Torch's ('storage', storage_type, key, location, numel) ids become one _Storage per key."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path.name}: unexpected storage id {pid!r:.100}", fix=REDOWNLOAD)
        key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
        storage = self.storages.setdefault(key, _Storage(pid[1].dtype, key, int(pid[4])))
        if storage != _Storage(pid[1].dtype, key, int(pid[4])):
            raise CheckpointError(f"{self.path.name}: storage {key} is described two ways", fix=REDOWNLOAD)
        return storage


def read_torch_checkpoint(path: Path) -> dict[str, SourceTensor]:
    """Describe every tensor of a torch zip checkpoint, in file order, reading only its index and pickle."""
    path = Path(path)
    _refuse_non_zip(path)
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
            prefix = _archive_prefix(archive, path)
            byteorder = prefix + "byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
                raise CheckpointError(
                    f"{path.name}: tensors are stored big-endian; only little-endian ones are supported",
                    fix="re-save it on a little-endian machine, or use the model's .safetensors files",
                )
            state = _unpickle(archive.read(prefix + "data.pkl"), path)
            return _source_tensors(state, archive, raw, prefix, path)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        raise CheckpointError(
            f"{path.name}: zip archive truncated or corrupt ({exc})", fix=REDOWNLOAD
        ) from None


def _refuse_non_zip(path: Path) -> None:
    """Explain what a non-zip file probably is, rather than failing deep inside zipfile."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist", fix="check the checkpoint folder") from None
    if head.startswith(b"PK"):
        return
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path.name} is a Git LFS pointer, not the weights", fix="run `git lfs pull`")
    if head.startswith(b"\x80"):
        raise CheckpointError(
            f"{path.name} was saved in the legacy torch<1.6 pickle format, which is not supported",
            fix="re-save it with torch>=1.6 (torch.save(torch.load(f), f)) or use its .safetensors files",
        )
    raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (not a zip archive)", fix=REDOWNLOAD)


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    for name in archive.namelist():
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name[: -len("data.pkl")]
    raise CheckpointError(f"{path.name}: archive has no data.pkl; not a torch checkpoint", fix=REDOWNLOAD)


def _unpickle(data: bytes, path: Path) -> object:
    try:
        return _SafeUnpickler(data, path).load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path.name}: data.pkl is corrupt ({exc!r:.200})", fix=REDOWNLOAD) from None


def _source_tensors(
    state: object, archive: zipfile.ZipFile, raw: io.BufferedReader, prefix: str, path: Path
) -> dict[str, SourceTensor]:
    if not isinstance(state, dict):
        kind = type(state).__name__
        raise CheckpointError(f"{path.name}: data.pkl holds a {kind}, not a state dict", fix=REDOWNLOAD)
    fmap = FileMap(path)
    starts: dict[str, int] = {}
    tensors = {}
    for name, ref in state.items():
        storage = _check_tensor(str(name), ref, path)
        if storage.key not in starts:
            starts[storage.key] = _storage_start(archive, raw, prefix + "data/" + storage.key, storage, path)
        load = _loader(fmap, starts[storage.key], ref)
        offset = _contiguous_offset(starts[storage.key], ref)
        tensors[str(name)] = SourceTensor(str(name), storage.dtype, ref.shape, path, load, offset=offset)
    return tensors


def _check_tensor(name: str, ref: object, path: Path) -> _Storage:
    """Refuse entries that are not tensors, or whose shape, stride and offset reach outside their storage."""
    if not isinstance(ref, _TensorRef) or not isinstance(ref.storage, _Storage):
        raise CheckpointError(f"{path.name}: entry {name} is not a tensor (not a state dict)", fix=REDOWNLOAD)
    storage = ref.storage
    if storage.dtype not in NUMPY_STORAGE:
        raise CheckpointError(
            f"{path.name}: tensor {name} has dtype {storage.dtype}, which the converter does not handle "
            f"(only {SUPPORTED})",
            fix="use a checkpoint saved in float32, float16 or bfloat16",
        )
    values = (ref.offset, *ref.shape, *ref.stride)
    valid = len(ref.shape) == len(ref.stride) and all(type(v) is int and v >= 0 for v in values)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True)) if valid else 0
    if not valid or (math.prod(ref.shape) > 0 and last >= storage.numel):
        raise CheckpointError(f"{path.name}: tensor {name} lies outside its storage", fix=REDOWNLOAD)
    return storage


def _storage_start(
    archive: zipfile.ZipFile, raw: io.BufferedReader, member: str, storage: _Storage, path: Path
) -> int:
    """Byte offset of a stored member's data, from its local header; torch never compresses them."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise CheckpointError(f"{path.name}: member {member} is missing", fix=REDOWNLOAD) from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(
            f"{path.name}: member {member} is compressed, so it cannot be memory-mapped",
            fix="re-save it with torch.save (which stores tensors uncompressed) or re-download it",
        )
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path.name}: local header of {member} is corrupt", fix=REDOWNLOAD)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    needed = storage.numel * DTYPE_SIZES[storage.dtype]
    if needed > info.file_size or start + info.file_size > path.stat().st_size:
        raise CheckpointError(f"{path.name}: member {member} is shorter than its storage", fix=REDOWNLOAD)
    return start


def _loader(fmap: FileMap, start: int, ref: _TensorRef) -> Callable[[], np.ndarray]:
    """A `load()` for one tensor: a plain memmap view when contiguous, else a strided view of its storage."""
    storage = ref.storage
    assert isinstance(storage, _Storage) and isinstance(ref.offset, int)
    itemsize = DTYPE_SIZES[storage.dtype]
    if _is_contiguous(ref.shape, ref.stride):
        return contiguous_loader(fmap, start + ref.offset * itemsize, storage.dtype, ref.shape)

    def load() -> np.ndarray:
        whole = fmap.array()[start : start + storage.numel * itemsize].view(NUMPY_STORAGE[storage.dtype])
        strides = tuple(s * itemsize for s in ref.stride)
        return np.lib.stride_tricks.as_strided(whole[ref.offset :], ref.shape, strides, writeable=False)

    return load


def _contiguous_offset(start: int, ref: _TensorRef) -> int | None:
    """Where a contiguous tensor's bytes start in the file; None for a strided view of its storage."""
    assert isinstance(ref.storage, _Storage) and isinstance(ref.offset, int)
    if not _is_contiguous(ref.shape, ref.stride):
        return None
    return start + ref.offset * DTYPE_SIZES[ref.storage.dtype]


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and step != expected:
            return math.prod(shape) == 0
        expected *= size
    return True


def write_torch_checkpoint(
    path: Path, tensors: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
) -> None:
    """Write a state dict that torch.load(weights_only=True) reads, without torch, one tensor at a time."""
    path = Path(path)
    plan = [
        (name, array, resolve_dtype(name, array, (dtypes or {}).get(name))) for name, array in tensors.items()
    ]
    pickled = _state_dict_pickle(plan)
    with atomic_output(path, force=True) as partial, zipfile.ZipFile(partial, "w") as archive:
        _add_member(archive, "archive/data.pkl", pickled)
        _add_member(archive, "archive/byteorder", b"little")
        for key, (_name, array, dtype) in enumerate(plan):
            _add_member(archive, f"archive/data/{key}", array, dtype)
        _add_member(archive, "archive/version", b"3\n")


def _add_member(archive: zipfile.ZipFile, name: str, data: bytes | np.ndarray, dtype: str = "") -> None:
    """Append one stored member, its extra field padded (id 'FB', as torch does) to align its data to 64.

    `data` is bytes, or an array written as `dtype` a chunk at a time.
    """
    size = len(data) if isinstance(data, bytes) else data.size * DTYPE_SIZES[dtype]
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a zip64 local header
    pad = -(archive.start_dir + 30 + len(name.encode()) + (20 if zip64 else 0)) % ALIGNMENT
    if pad:
        pad += ALIGNMENT if pad < 4 else 0
        info.extra = b"FB" + struct.pack("<H", pad - 4) + b"Z" * (pad - 4)
    with archive.open(info, "w", force_zip64=zip64) as out:
        if isinstance(data, bytes):
            out.write(data)
        else:
            write_array_bytes(out, data, dtype)


def _state_dict_pickle(plan: list[tuple[str, np.ndarray, str]]) -> bytes:
    """Protocol-2 opcodes for OrderedDict{name: _rebuild_tensor_v2(storage, 0, shape, stride, False, {})}."""
    ordered_dict = b"ccollections\nOrderedDict\n)R"
    out = bytearray(b"\x80\x02" + ordered_dict + b"(")
    for key, (name, array, dtype) in enumerate(plan):
        shape = tuple(array.shape)
        strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        storage_type = f"ctorch\n{STORAGE_NAMES[dtype]}\n".encode()
        persistent_id = b"(" + _str("storage") + storage_type + _str(str(key)) + _str("cpu")
        persistent_id += _int(array.size)
        out += _str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent_id + b"tQ" + _int(0)
        out += _tuple(shape) + _tuple(strides) + b"\x89" + ordered_dict + b"tR"
    return bytes(out + b"u.")


def _str(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _int(value: int) -> bytes:
    if value < 256:
        return b"K" + bytes([value])
    if value < 65536:
        return b"M" + struct.pack("<H", value)
    if value < 2**31:
        return b"J" + struct.pack("<i", value)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def _tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"
