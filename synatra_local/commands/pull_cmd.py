"""`synatra-local pull owner/repo[:QUANT]`: one GGUF from the Hugging Face hub into the models folder."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import run_app
from ._progress import TerminalProgress
from .options import Force, Quiet, Revision

app = typer.Typer(add_completion=False)


@app.command()
def pull(
    model: Annotated[
        str,
        typer.Argument(
            help="owner/repo[:QUANT] (default Q4_K_M), owner/repo/FILE.gguf; owner/repo@REVISION:QUANT for a revision."
        ),
    ],
    revision: Revision = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Download one GGUF (resumably, into the hub cache; sha256 checked) and link it into the models folder.

    Prints the model's path. With HF_HUB_OFFLINE=1 only what the hub cache holds can be pulled.
    """
    from synatra_local.runtime.pull import pull as pull_model

    print(pull_model(model, revision=revision, force=force, progress=TerminalProgress(not quiet)))


def main(argv: list[str]) -> int:
    return run_app(app, argv, "pull")
