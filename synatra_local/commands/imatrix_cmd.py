"""`synatra-local imatrix MODEL [-o FILE]`: an importance matrix on Korean calibration text, as llama-imatrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import run_app
from ._progress import CountingProgress
from .options import Batch, Force, ModelArg, Quiet, Threads, ranged, read_text_file

app = typer.Typer(add_completion=False)


@app.command()
def imatrix(
    model: ModelArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output file (default MODEL-imatrix.gguf beside it; .dat: legacy)."),
    ] = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="UTF-8 calibration text (default: the shipped Korean excerpt).")
    ] = None,
    ctx: Annotated[int, ranged("--ctx", "-c", name="n_ctx", help="Window size in tokens.")] = 512,
    chunks: Annotated[int | None, ranged("--chunks", name="chunks", help="Use at most this many windows.")] = None,
    batch: Batch = 512,
    threads: Threads = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Sum the squared activations entering each weight matrix; prints the file written (llama.cpp's GGUF format)."""
    from synatra_local.convert.imatrix import collect_imatrix
    from synatra_local.convert.imatrix_file import write_imatrix
    from synatra_local.core.atomic import refuse_existing
    from synatra_local.runtime.store import resolve_model

    model_path = resolve_model(model)
    target = output or model_path.with_name(f"{model_path.stem}-imatrix.gguf")
    refuse_existing([target], force=force)
    source = read_text_file(text) if text is not None else None
    matrix = collect_imatrix(
        model_path, text=source, dataset=text.name if text else None, n_ctx=ctx, chunks=chunks, batch=batch,
        threads=threads, progress=CountingProgress(not quiet),
    )
    print(write_imatrix(matrix, target, force=force))


def main(argv: list[str]) -> int:
    return run_app(app, argv, "imatrix")
