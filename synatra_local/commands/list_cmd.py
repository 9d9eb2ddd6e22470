"""`synatra-local list`: the models in the models folder."""

from __future__ import annotations

import typer

from ._app import run_app

app = typer.Typer(add_completion=False)


@app.command(name="list")
def list_models() -> None:
    """Name, size and path of each GGUF in the models folder (`$SYNATRA_LOCAL_MODELS`, default ./models)."""
    from synatra_local.core.atomic import format_bytes
    from synatra_local.runtime.store import list_models as stored
    from synatra_local.runtime.store import models_dir

    models = stored()
    if not models:
        print(f"no models in {models_dir()} (make one with `synatra-local quantize SOURCE`)")
        return
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.name:<{width}}  {format_bytes(m.size_bytes):>10}  {m.path}")


def main(argv: list[str]) -> int:
    return run_app(app, argv, "list")
