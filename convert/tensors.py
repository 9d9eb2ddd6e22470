"""The converter's view of one checkpoint tensor: where it lives and how to map it, never loaded eagerly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}

# numpy storage for each checkpoint dtype; bfloat16 has no numpy type, so it is kept as its raw 16-bit pattern.
NUMPY_STORAGE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of a checkpoint file; `load()` returns a (usually memory-mapped) array without copying.

    BF16 tensors come back as uint16 arrays holding the raw bfloat16 bits. `offset` is where the tensor's bytes
    start in `file` when they are stored contiguously (None for a strided view), so the converter can copy or read
    them with plain file calls instead of faulting a memory map in 4 KiB at a time.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    load: Callable[[], np.ndarray]
    offset: int | None = None

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits to float32 exactly (bfloat16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, nearest-even, as torch and llama.cpp do (NaNs stay quiet NaNs)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)
