"""`synatra-local list`: the models in the models folder, their prompt format and where they came from."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import run_app

app = typer.Typer(add_completion=False)


@app.command(name="list")
def list_models() -> None:
    """Name, size, prompt format (and the rule that chose it), origin and path of each GGUF in the models folder
    (`$SYNATRA_LOCAL_MODELS`, default ./models)."""
    from synatra_local.core.atomic import format_bytes
    from synatra_local.runtime.store import list_models as stored
    from synatra_local.runtime.store import models_dir

    models = stored()
    if not models:
        print(f"no models in {models_dir()} (make one with `synatra-local quantize SOURCE`, "
              "or `synatra-local pull owner/repo:QUANT`)")
        return
    rows = [(m.name, format_bytes(m.size_bytes), *_describe(m.path), str(m.path)) for m in models]
    name, size, fmt, origin = (max(len(row[i]) for row in rows) for i in range(4))
    for row in rows:
        print(f"{row[0]:<{name}}  {row[1]:>{size}}  {row[2]:<{fmt}}  {row[3]:<{origin}}  {row[4]}")


def _describe(path: Path) -> tuple[str, str]:
    """The prompt format with its rule, and the origin: the repo it was pulled from, or the one it was made from."""
    from synatra_local.core.errors import SynatraError
    from synatra_local.core.gguf_info import read_model_info
    from synatra_local.runtime.prompts import describe_prompt_format
    from synatra_local.runtime.store import pulled_from

    origin = pulled_from(path)
    try:
        info = read_model_info(path)
    except SynatraError:
        return "? (unreadable)", origin.describe() if origin else "-"
    decision = describe_prompt_format(info)
    made_from = " @ ".join(filter(None, [info.source_repo, (info.source_revision or "")[:12]]))
    return f"{decision.format} ({decision.rule})", origin.describe() if origin else (made_from or "-")


def main(argv: list[str]) -> int:
    return run_app(app, argv, "list")
