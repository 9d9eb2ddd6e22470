"""`synatra-local quantize SOURCE -q TYPE ...`: llama.cpp quantizations into the models folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import run_app
from ._progress import TerminalProgress
from .options import Force, PromptFormat, Quiet, Revision, Threads

app = typer.Typer(add_completion=False)


@app.command()
def quantize(
    source: Annotated[str, typer.Argument(help="A HF model folder, a HF repo id, or an unquantized GGUF.")],
    types: Annotated[
        list[str] | None,
        typer.Option("--type", "-q", help="Quantization type, repeatable (default Q4_K_M, Q8_0)."),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Output folder (default: models).")
    ] = None,
    threads: Threads = None,
    keep_intermediate: Annotated[
        bool, typer.Option("--keep-intermediate", help="Keep the unquantized GGUF made on the way.")
    ] = False,
    revision: Revision = None,
    prompt_format: PromptFormat = None,
    imatrix: Annotated[
        str | None,
        typer.Option(
            "--imatrix",
            help="Importance matrix: a file from `synatra-local imatrix` or llama-imatrix (GGUF or .dat), or auto "
            "(computed on the shipped Korean calibration text). Required by the IQ types.",
        ),
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Quantize with llama.cpp's quantizer; prints each file written, one per line."""
    from synatra_local.convert import quantize as quantize_model
    from synatra_local.runtime.store import models_dir

    paths = quantize_model(
        source,
        types or ["Q4_K_M", "Q8_0"],
        output_dir=output_dir or models_dir(),
        threads=threads,
        keep_intermediate=keep_intermediate,
        force=force,
        revision=revision,
        prompt_format=prompt_format,
        imatrix=imatrix,
        progress=TerminalProgress(not quiet),
    )
    for path in paths:
        print(path)


def main(argv: list[str]) -> int:
    return run_app(app, argv, "quantize")
