"""An importance matrix made as llama-imatrix makes one: the text in non-overlapping windows, every token an output,
and the squared activations entering each block's weight matrices summed through llama.cpp's evaluation callback
(multiplications of 16 or more F32 rows; the output matrix is left out, as llama-imatrix does by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synatra_local.core.korean_text import CALIBRATION_FILE, calibration_text
from synatra_local.core.llama_backend import WindowModel, text_windows
from synatra_local.core.progress import Progress, SilentProgress

from .imatrix_file import ImportanceMatrix


class _Collector:
    """Sums x² per input column of each weight (per slice of a stacked weight), as llama-imatrix's collector."""

    def __init__(self) -> None:
        self.matrix = ImportanceMatrix()

    def __call__(self, name: str, weight_dims: tuple[int, int], activations: np.ndarray) -> None:
        ne2, ne3 = weight_dims
        n_mat = ne2 * ne3
        cols = activations.shape[-1]
        sums = self.matrix.sums.setdefault(name, np.zeros((n_mat, cols)))
        counts = self.matrix.counts.setdefault(name, np.zeros(n_mat, dtype=np.int64))
        if sums.shape != (n_mat, cols):
            raise ValueError(f"{name}: activations of {cols} columns after {sums.shape[1]}")
        squares = np.square(activations, dtype=np.float64).sum(axis=2)  # [ne3, ne2, cols]
        for i3 in range(squares.shape[0]):
            for i2 in range(squares.shape[1]):
                sums[(i3 % ne3) * ne2 + (i2 % ne2)] += squares[i3, i2]
        rows = activations.shape[0] * activations.shape[1] * activations.shape[2]
        counts += rows // n_mat
        if not np.isfinite(sums).all():
            raise ValueError(f"non-finite activations entering {name}")


def collect_imatrix(
    model: Path,
    *,
    text: str | None = None,
    dataset: str | None = None,
    n_ctx: int = 512,
    chunks: int | None = None,
    batch: int = 512,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ImportanceMatrix:
    """The importance matrix of `model` over `text` (default: the shipped Korean calibration excerpt); `dataset`
    names the text in the file (default: the excerpt's file name)."""
    progress = progress or SilentProgress()
    if text is None:
        text, dataset = calibration_text(), dataset or CALIBRATION_FILE
    collector = _Collector()
    with WindowModel(model, n_ctx=n_ctx, n_batch=batch, n_threads=threads, observer=collector) as scored:
        windows = text_windows(scored.tokenize(text), n_ctx, chunks)
        progress.start(f"imatrix: {len(windows)} windows of {n_ctx} tokens", len(windows))
        try:
            for window in windows:
                scored.window_logits(window, 0, keep=False)
                progress.advance(1)
        finally:
            progress.finish()
    matrix = collector.matrix
    matrix.datasets = [dataset or "text"]
    matrix.chunk_count = len(windows)
    matrix.chunk_size = n_ctx
    return matrix
