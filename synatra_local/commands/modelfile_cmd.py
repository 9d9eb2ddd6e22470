"""`synatra-local modelfile MODEL`: an Ollama Modelfile that prompts the GGUF exactly as synatra-local does."""

from __future__ import annotations

import typer

from ._app import run_app, stderr
from .options import ModelArg, Template

app = typer.Typer(add_completion=False)


@app.command()
def modelfile(model: ModelArg, template: Template = None) -> None:
    """Print a Modelfile (FROM, TEMPLATE, PARAMETER stop, LICENSE): `synatra-local modelfile M > Modelfile`,
    then `ollama create NAME -f Modelfile`."""
    from synatra_local.core.gguf_info import read_model_info
    from synatra_local.runtime.modelfile import ollama_modelfile
    from synatra_local.runtime.prompts import describe_prompt_format
    from synatra_local.runtime.store import resolve_model

    info = read_model_info(resolve_model(model))
    text = ollama_modelfile(info, template=template)
    if template is None:
        for warning in describe_prompt_format(info).warnings:
            stderr.print(f"warning: {warning}", style="yellow", markup=False)
    print(text, end="")


def main(argv: list[str]) -> int:
    return run_app(app, argv, "modelfile")
