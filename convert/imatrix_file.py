"""Importance-matrix files as llama.cpp writes and reads them: the GGUF format of llama-imatrix (default) and the
legacy `.dat` format (read and written for tools that still want it). Written atomically.

GGUF: `general.type = imatrix`, `imatrix.datasets` (strings), `imatrix.chunk_count`, `imatrix.chunk_size`
(u32), and per weight `NAME.in_sum2` (F32 [n_mat, n_cols]: raw sums of squared activations) and `NAME.counts` (F32
[n_mat, 1]: how many activation rows each slice summed). Legacy: per entry `sums / counts * ncall` with its `ncall`
(chunks), then the chunk count and the dataset name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synatra_local.core.atomic import atomic_output
from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_lib import gguf


@dataclass
class ImportanceMatrix:
    """Sums of squared activations entering each weight matrix ([n_mat, n_cols] per weight) and their row counts."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What llama-quantize hands the quantizer: each slice's sums over its count (1 where it saw nothing)."""
        found = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].reshape(-1, 1).astype(np.float64)
            found[name] = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0).astype(np.float32).ravel()
        return found


def write_imatrix(matrix: ImportanceMatrix, path: Path, *, force: bool = False) -> Path:
    """GGUF unless the name ends in `.dat` (llama-imatrix's choice by --output-format, here by suffix)."""
    if not matrix.sums:
        raise SynatraError("the importance matrix is empty: no matrix multiplication was observed",
                           fix="use a longer calibration text or a smaller --ctx")
    with atomic_output(Path(path), force=force) as partial:
        if path.suffix.lower() == ".dat":
            _write_legacy(matrix, partial)
        else:
            _write_gguf(matrix, partial)
    return path


def _write_gguf(matrix: ImportanceMatrix, path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), arch="")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes no architecture
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", matrix.datasets)
    writer.add_uint32("imatrix.chunk_count", matrix.chunk_count)
    writer.add_uint32("imatrix.chunk_size", matrix.chunk_size)
    for name in sorted(matrix.sums):
        sums = np.asarray(matrix.sums[name], dtype=np.float32)
        writer.add_tensor(f"{name}.in_sum2", sums.reshape(-1, sums.shape[-1]))
        writer.add_tensor(f"{name}.counts", np.asarray(matrix.counts[name], dtype=np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_legacy(matrix: ImportanceMatrix, path: Path) -> None:
    chunk_size = max(matrix.chunk_size, 1)
    means = matrix.means()
    with path.open("wb") as out:
        out.write(struct.pack("<i", len(matrix.sums)))
        for name in sorted(matrix.sums):
            counts = matrix.counts[name].astype(np.int64)
            ncall = int((counts.max() + chunk_size - 1) // chunk_size)  # ceiling, as llama-imatrix
            values = (means[name] * np.float32(ncall)).astype("<f4")
            encoded = name.encode()
            out.write(struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", ncall, values.size))
            out.write(values.tobytes())
        out.write(struct.pack("<i", matrix.chunk_count))
        dataset = (matrix.datasets[-1] if matrix.datasets else "").encode()
        out.write(struct.pack("<i", len(dataset)) + dataset)


def read_imatrix(path: Path) -> ImportanceMatrix:
    """Either format, told apart as llama.cpp does (a GGUF header, else legacy)."""
    path = Path(path)
    if not path.is_file():
        raise SynatraError(f"{path} does not exist", fix="make one with `synatra-local imatrix MODEL -o FILE`")
    with path.open("rb") as f:
        magic = f.read(4)
    try:
        return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    except (ValueError, struct.error, KeyError, IndexError) as exc:
        raise SynatraError(f"{path} is not an importance matrix llama.cpp could read ({exc})",
                           fix="make it again with `synatra-local imatrix`") from exc


def _read_gguf(path: Path) -> ImportanceMatrix:
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in fields]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    matrix = ImportanceMatrix(
        datasets=list(fields["imatrix.datasets"].contents()),
        chunk_count=int(fields["imatrix.chunk_count"].contents()),
        chunk_size=int(fields["imatrix.chunk_size"].contents()),
    )
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    for tensor_name, data in tensors.items():
        if tensor_name.endswith(".in_sum2"):
            name = tensor_name.removesuffix(".in_sum2")
            matrix.sums[name] = data.reshape(-1, data.shape[-1]).astype(np.float64)
            matrix.counts[name] = np.rint(tensors[f"{name}.counts"]).astype(np.int64).ravel()
    if not matrix.sums:
        raise ValueError("no .in_sum2 tensors")
    return matrix


def _read_legacy(path: Path) -> ImportanceMatrix:
    data = path.read_bytes()
    offset = 0

    def take(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise ValueError("no entries")
    matrix = ImportanceMatrix()
    for _ in range(n_entries):
        (length,) = take("<i")
        name = data[offset : offset + length].decode()
        offset += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise ValueError(f"entry {name} has no values")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=offset).astype(np.float64)
        offset += 4 * nval
        matrix.sums[name] = values.reshape(1, -1)  # legacy keeps one count for all slices: means are sums / ncall
        matrix.counts[name] = np.array([ncall], dtype=np.int64)
    if offset < len(data):
        (matrix.chunk_count,) = take("<i")
        (length,) = take("<i")
        if length > 0:
            matrix.datasets.append(data[offset : offset + length].decode(errors="replace"))
    return matrix
