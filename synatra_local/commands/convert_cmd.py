"""`synatra-local convert SOURCE -o OUT.gguf`: one unquantized (or Q8_0) GGUF from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import run_app
from ._progress import TerminalProgress
from .options import Force, PromptFormat, Quiet, Revision

app = typer.Typer(add_completion=False)


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="A Hugging Face model folder or repo id (owner/name).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .gguf file to write.")],
    outtype: Annotated[str, typer.Option("--outtype", help="f32, f16, bf16, q8_0 or auto.")] = "auto",
    revision: Revision = None,
    prompt_format: PromptFormat = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Convert a Hugging Face checkpoint into one GGUF file; prints the path written."""
    from synatra_local.convert import convert as convert_checkpoint

    path = convert_checkpoint(
        source,
        output,
        outtype=outtype,
        revision=revision,
        prompt_format=prompt_format,
        force=force,
        progress=TerminalProgress(not quiet),
    )
    print(path)


def main(argv: list[str]) -> int:
    return run_app(app, argv, "convert")
