"""`synatra-local rm NAME`: delete a model from the models folder (and only from there)."""

from __future__ import annotations

import typer

from ._app import run_app
from .options import ModelArg

app = typer.Typer(add_completion=False)


@app.command()
def rm(model: ModelArg) -> None:
    """Remove one GGUF from the models folder; prints the path removed."""
    from synatra_local.runtime.store import remove_model

    print(remove_model(model))


def main(argv: list[str]) -> int:
    return run_app(app, argv, "rm")
