"""`synatra-local eval MODEL [--ref REFERENCE]`: perplexity and KL-divergence on Korean text, as llama-perplexity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ._app import run_app, stderr
from ._progress import CountingProgress
from .options import Batch, ModelArg, Quiet, Threads, ranged, read_text_file

if TYPE_CHECKING:
    from synatra_local.runtime.quality import QualityReport

app = typer.Typer(add_completion=False)


@app.command(name="eval")
def eval_command(
    model: ModelArg,
    ref: Annotated[
        str | None, typer.Option("--ref", help="Reference model (the F16/F32 GGUF) for KL-divergence and top-1.")
    ] = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="UTF-8 text to score (default: the shipped Korean excerpt).")
    ] = None,
    ctx: Annotated[
        int, ranged("--ctx", "-c", name="n_ctx", help="Window size in tokens; the second half of each is scored.")
    ] = 512,
    chunks: Annotated[int | None, ranged("--chunks", name="chunks", help="Score at most this many windows.")] = None,
    batch: Batch = 512,
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """Perplexity of MODEL; with --ref also KL-divergence from the reference, top-1 agreement, perplexity ratio."""
    from synatra_local.runtime.quality import score
    from synatra_local.runtime.store import resolve_model

    model_path = resolve_model(model)
    ref_path = resolve_model(ref) if ref is not None else None
    source = read_text_file(text) if text is not None else None
    report = None
    try:
        for latest in score(
            model_path, reference=ref_path, text=source, n_ctx=ctx, chunks=chunks, batch=batch, threads=threads,
            progress=CountingProgress(not quiet),
        ):
            report = latest
    except KeyboardInterrupt:
        if report is None:
            raise
        stderr.print(f"interrupted: figures over {report.windows_scored} of {report.windows} windows", style="yellow")
        _show(report, as_json)
        raise
    assert report is not None
    _show(report, as_json)


def _show(report: QualityReport, as_json: bool) -> None:
    if as_json:
        data = report.as_dict()
        data["complete"] = report.complete
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right")
    rows = [("perplexity", f"{report.perplexity:.4f}")]
    if report.kld is not None:
        rows += [
            ("reference perplexity", f"{report.ref_perplexity:.4f}"),
            ("perplexity ratio", f"{report.ppl_ratio:.4f}"),
            ("KL-divergence mean", f"{report.kld.mean:.6f}"),
            ("KL-divergence median", f"{report.kld.median:.6f}"),
            ("KL-divergence 99%", f"{report.kld.p99:.6f}"),
            ("KL-divergence max", f"{report.kld.max:.6f}"),
            ("same top token", f"{100 * report.top1_agreement:.2f}%"),
        ]
    rows += [
        ("tokens scored", f"{report.tokens_scored:,}"),
        ("windows", f"{report.windows_scored} of {report.windows} ({report.n_ctx} tokens each)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def main(argv: list[str]) -> int:
    return run_app(app, argv, "eval")
