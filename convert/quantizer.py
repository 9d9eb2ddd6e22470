"""Quantize with llama.cpp's own quantizer: several outputs from one unquantized intermediate written once."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synatra_local.core.atomic import atomic_output, ensure_free_space, refuse_existing
from synatra_local.core.errors import ModelFileError, SynatraError
from synatra_local.core.gguf_info import read_model_info
from synatra_local.core.gguf_lib import gguf
from synatra_local.core.progress import Progress, SilentProgress

DEFAULT_TYPES = ("Q4_K_M", "Q8_0")
# Approximate bits per weight of each file type, for the free-space check before writing.
_BITS_PER_WEIGHT = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "Q3_K_L": 4.3,
    "Q3_K_M": 3.9,
    "Q3_K_S": 3.5,
    "Q2_K": 3.4,
    "Q2_K_S": 3.0,
    "IQ4_XS": 4.3,
    "IQ4_NL": 4.5,
    "IQ3_M": 3.7,
    "IQ3_S": 3.5,
    "IQ3_XS": 3.3,
    "IQ3_XXS": 3.1,
    "IQ2_M": 2.7,
    "IQ2_S": 2.5,
    "IQ2_XS": 2.3,
    "IQ2_XXS": 2.1,
    "IQ1_M": 1.8,
    "IQ1_S": 1.6,
}
_UNQUANTIZED = {"F32", "F16", "BF16"}
IMATRIX_AUTO = "auto"


def needs_imatrix(type_name: str) -> bool:
    """The i-quants, and Q2_K_S, which llama.cpp refuses or makes badly without an importance matrix."""
    return type_name.startswith("IQ") or type_name == "Q2_K_S"


def file_types() -> dict[str, int]:
    """llama.cpp file types by name: Q4_K_M, Q8_0, Q5_K_M, IQ4_XS, F16, ..."""
    types = {}
    for member in gguf.LlamaFileType:
        name = member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        if name not in {"GUESSED", "MXFP4_MOE", "NVFP4"}:
            types[name] = int(member)
    return types


def parse_type(name: str) -> tuple[str, int]:
    types = file_types()
    key = name.strip().upper()
    if key not in types:
        raise SynatraError(
            f"unknown quantization type {name!r}", fix=f"choose from {', '.join(sorted(types))}"
        )
    return key, types[key]


@dataclass(frozen=True)
class UnquantizedGGUF:
    path: Path
    name: str
    parameters: int


def read_unquantized(path: Path) -> UnquantizedGGUF:
    """Check that a GGUF can be quantized (its matrices are F32/F16/BF16) and read its name and size."""
    try:
        info = read_model_info(path)
    except ModelFileError as exc:
        raise SynatraError(f"{exc.message}", fix="pass an unquantized GGUF written by convert") from exc
    quantized = [t for t in info.tensors if t.type_name not in _UNQUANTIZED]
    if quantized:
        raise SynatraError(
            f"{path} is already quantized (e.g. {quantized[0].name} is {quantized[0].type_name})",
            fix="quantize from the unquantized F16/BF16/F32 GGUF or from the Hugging Face checkpoint",
        )
    return UnquantizedGGUF(path, info.name or path.stem, info.parameters)


def estimated_bytes(parameters: int, type_name: str) -> int:
    """Roughly how large a quantization comes out, for the disk check and the progress bar."""
    return int(parameters * _BITS_PER_WEIGHT.get(type_name, 16) / 8)


def output_name(stem: str, type_name: str) -> str:
    return f"{stem}-{type_name}.gguf"


def stem_of(gguf_path: Path) -> str:
    """`synatra-7b-v0.1-F16.gguf` → `synatra-7b-v0.1`."""
    return re.sub(r"-(F32|F16|BF16)$", "", gguf_path.stem, flags=re.I)


def quantize_gguf(
    source: Path,
    outputs: dict[str, Path],
    *,
    threads: int | None = None,
    force: bool = False,
    imatrix: str | Path | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Quantize one unquantized GGUF into each `{type name: output path}`; outputs appear whole or not at all.

    `imatrix`: an importance-matrix file (GGUF or legacy .dat), or "auto" to compute one from `source` on the
    shipped Korean calibration text first; the i-quants require one.
    """
    progress = progress or SilentProgress()
    if not outputs:
        return []
    check_imatrix_needed(list(outputs), imatrix)
    info = read_unquantized(source)
    refuse_existing(outputs.values(), force=force)
    estimates = {t: estimated_bytes(info.parameters, t) for t in outputs}
    needed = sum(int(size * 1.05) for size in estimates.values())
    ensure_free_space(next(iter(outputs.values())).parent, needed, what="the quantized files")
    weights = _load_imatrix(source, imatrix, threads, progress) if imatrix is not None else None
    threads = threads or os.cpu_count() or 1
    written = []
    for type_name, path in outputs.items():
        _quantize_one(
            source, path, parse_type(type_name)[1], threads, estimates[type_name], force, progress, weights
        )
        written.append(path)
    return written


def check_imatrix_needed(type_names: list[str], imatrix: str | Path | None) -> None:
    """Refuse the i-quants without a matrix, and a matrix file that is not there, before any work starts."""
    if imatrix is not None and str(imatrix) != IMATRIX_AUTO and not Path(imatrix).is_file():
        raise SynatraError(f"importance matrix {imatrix} does not exist",
                           fix="make one with `synatra-local imatrix MODEL -o FILE`, or pass --imatrix auto")
    wanting = [t for t in type_names if needs_imatrix(t)]
    if wanting and imatrix is None:
        raise SynatraError(
            f"{', '.join(wanting)} needs an importance matrix",
            fix="add --imatrix auto (computed on the shipped Korean calibration text) or --imatrix FILE",
        )


@dataclass(frozen=True)
class _Weights:
    """An importance matrix as the quantizer takes it, and what the output records about it."""

    means: dict[str, np.ndarray]
    metadata: dict[str, str | int]


def _load_imatrix(source: Path, imatrix: str | Path, threads: int | None, progress: Progress) -> _Weights:
    from .imatrix import collect_imatrix
    from .imatrix_file import read_imatrix

    if str(imatrix) == IMATRIX_AUTO:
        matrix, label = collect_imatrix(source, threads=threads, progress=progress), IMATRIX_AUTO
    else:
        matrix, label = read_imatrix(Path(imatrix)), Path(imatrix).name
    metadata: dict[str, str | int] = {"quantize.imatrix.file": label}
    if matrix.datasets:
        metadata["quantize.imatrix.dataset"] = matrix.datasets[0]
    metadata["quantize.imatrix.entries_count"] = len(matrix.sums)
    if matrix.chunk_count > 0:
        metadata["quantize.imatrix.chunks_count"] = matrix.chunk_count
    return _Weights(matrix.means(), metadata)


def _quantize_one(
    source: Path,
    path: Path,
    ftype: int,
    threads: int,
    estimate: int,
    force: bool,
    progress: Progress,
    weights: _Weights | None = None,
) -> None:
    """One output, with the bytes written so far (against the estimated size) as progress."""
    progress.start(f"quantize → {path.name}", estimate)
    shown = 0

    def advance(size: int) -> None:
        nonlocal shown
        step = min(size, estimate) - shown
        if step > 0:
            progress.advance(step)
            shown += step

    from synatra_local.core import llama_backend  # here: `convert` alone never loads llama.cpp (0.1 s of start)

    with atomic_output(path, force=force) as partial:
        if weights is None:
            llama_backend.quantize(source, partial, ftype, threads, on_written=advance)
        else:
            llama_backend.quantize_with_imatrix(
                source, partial, ftype, threads, weights.means, weights.metadata, on_written=advance
            )
    advance(estimate)
    progress.finish()
