"""What a quantization loses, measured as llama-perplexity measures it: perplexity over the second half of
non-overlapping windows, and with a reference model the KL-divergence of the next-token distributions.

Windows: the text is tokenized once (BOS first), cut into windows of `n_ctx` tokens, each evaluated from an empty
cache with its first token replaced by BOS; the positions from `n_ctx // 2` to the next-to-last predict the tokens
after them (`n_ctx - 1 - n_ctx // 2` per window), so every scored token has at least half a window of context.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from synatra_local.core.errors import SynatraError
from synatra_local.core.korean_text import eval_text
from synatra_local.core.llama_backend import WindowModel, text_windows
from synatra_local.core.progress import Progress, SilentProgress

from . import limits

_ROWS = 64  # log-softmax in blocks of rows: 64 x 152k vocabulary x 8 bytes stays near 80 MB


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64 (each row shifted by its maximum first)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


@dataclass(frozen=True)
class KLDivergence:
    mean: float
    median: float
    p99: float
    max: float


@dataclass(frozen=True)
class QualityReport:
    """The figures so far: complete when every window was scored (`windows_scored == windows`)."""

    perplexity: float
    tokens_scored: int
    windows_scored: int
    windows: int
    n_ctx: int
    ref_perplexity: float | None = None
    ppl_ratio: float | None = None
    kld: KLDivergence | None = None
    top1_agreement: float | None = None

    @property
    def complete(self) -> bool:
        return self.windows_scored == self.windows

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Tally:
    """Per-token figures of every window scored so far."""

    nll: list[np.ndarray] = field(default_factory=list)
    nll_ref: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)

    def add_window(self, logits: np.ndarray, targets: np.ndarray, ref_logits: np.ndarray | None) -> None:
        for start in range(0, len(targets), _ROWS):
            rows = slice(start, start + _ROWS)
            logp = log_softmax(logits[rows])
            picked = np.arange(logp.shape[0])
            self.nll.append(-logp[picked, targets[rows]])
            if ref_logits is None:
                continue
            ref_logp = log_softmax(ref_logits[rows])
            self.nll_ref.append(-ref_logp[picked, targets[rows]])
            self.kld.append(np.sum(np.exp(ref_logp) * (ref_logp - logp), axis=1))
            self.same_top.append(logits[rows].argmax(axis=1) == ref_logits[rows].argmax(axis=1))

    def report(self, windows_scored: int, windows: int, n_ctx: int) -> QualityReport:
        nll = np.concatenate(self.nll)
        ppl = math.exp(float(nll.mean()))
        base = QualityReport(ppl, int(nll.size), windows_scored, windows, n_ctx)
        if not self.nll_ref:
            return base
        ref_ppl = math.exp(float(np.concatenate(self.nll_ref).mean()))
        kld = np.concatenate(self.kld)
        return replace(
            base,
            ref_perplexity=ref_ppl,
            ppl_ratio=ppl / ref_ppl,
            kld=KLDivergence(
                float(kld.mean()), float(np.median(kld)), float(np.percentile(kld, 99)), float(kld.max())
            ),
            top1_agreement=float(np.concatenate(self.same_top).mean()),
        )


def score(
    model: Path,
    *,
    reference: Path | None = None,
    text: str | None = None,
    n_ctx: int = 512,
    chunks: int | None = None,
    batch: int = 512,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Iterator[QualityReport]:
    """Score `model` (and `reference`) window by window; yields the figures so far after each window.

    Both models stay loaded and take turns on each window, so a stop at any point has comparable figures.
    """
    for name, value in (("n_ctx", n_ctx), ("batch", batch), ("threads", threads), ("chunks", chunks)):
        limits.check_optional(name, value)
    if n_ctx < 4:
        raise SynatraError(f"--ctx {n_ctx} leaves no token to score", fix="use --ctx 4 or more (512 is usual)")
    progress = progress or SilentProgress()
    text = eval_text() if text is None else text
    opened: list[WindowModel] = []
    try:
        if reference is not None:
            opened.append(WindowModel(reference, n_ctx=n_ctx, n_batch=batch, n_threads=threads))
        opened.append(WindowModel(model, n_ctx=n_ctx, n_batch=batch, n_threads=threads))
        scored, ref = opened[-1], (opened[0] if reference is not None else None)
        tokens = (ref or scored).tokenize(text)
        if ref is not None:
            _check_same_vocabulary(scored, ref, tokens, text)
        windows = text_windows(tokens, n_ctx, chunks)
        first = n_ctx // 2
        tally = _Tally()
        progress.start(f"eval: {len(windows)} windows of {n_ctx} tokens", len(windows))
        for done, window in enumerate(windows, 1):
            targets = np.asarray(window[first + 1 :], dtype=np.int64)
            ref_logits = ref.window_logits(window, first)[:-1] if ref is not None else None
            tally.add_window(scored.window_logits(window, first)[:-1], targets, ref_logits)
            progress.advance(1)
            yield tally.report(done, len(windows), n_ctx)
    finally:
        progress.finish()  # also on Ctrl-C: the bar stops before the figures so far are printed
        for opened_model in opened:
            opened_model.close()


def evaluate(model: Path, **options: object) -> QualityReport:
    """`score` to the end: the figures over every window."""
    return deque(score(model, **options), maxlen=1)[0]  # type: ignore[arg-type]


def _check_same_vocabulary(model: WindowModel, ref: WindowModel, tokens: list[int], text: str) -> None:
    if model.n_vocab != ref.n_vocab or model.tokenize(text) != tokens:
        raise SynatraError(
            f"the model and the reference have different vocabularies ({model.n_vocab} and {ref.n_vocab} tokens) "
            "or tokenize the text differently",
            fix="compare quantizations of the same model (--ref its F16 or F32 GGUF)",
        )
