"""`synatra-local inspect FILE.gguf`: what a GGUF holds, without loading its weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._app import run_app
from .options import ModelArg

app = typer.Typer(add_completion=False)


@app.command()
def inspect(
    model: ModelArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Architecture, size, parameters, tensor types, prompt format (and the rule that chose it), template, license."""
    from synatra_local.core.atomic import format_bytes
    from synatra_local.core.gguf_info import read_model_info
    from synatra_local.runtime.prompts import describe_prompt_format
    from synatra_local.runtime.store import pulled_from, resolve_model

    info = read_model_info(resolve_model(model))
    decision = describe_prompt_format(info)
    origin = pulled_from(info.path)
    if as_json:
        data = asdict(info)
        for detail in ("tensors", "names", "special_tokens"):
            data.pop(detail)
        data["path"] = str(info.path)
        data["tensor_types"] = info.tensor_types
        data["format"] = asdict(decision)
        data["pulled_from"] = asdict(origin) if origin else None
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a long path is wrapped, never cut short
    rows = [
        ("file", str(info.path)),
        ("size", format_bytes(info.file_bytes)),
        ("name", info.name or "-"),
        ("architecture", info.architecture),
        ("parameters", f"{info.parameters:,}"),
        ("file type", info.file_type or "-"),
        ("tensor types", ", ".join(f"{k}×{v}" for k, v in info.tensor_types.items())),
        ("layers / heads / kv heads", f"{info.block_count} / {info.head_count} / {info.head_count_kv}"),
        ("context length", str(info.context_length)),
        ("prompt format", decision.format),
        ("format chosen by", f"{decision.rule}: {decision.reason}"),
        *(("warning", warning) for warning in decision.warnings),
        ("chat template", _first_line(info.chat_template)),
        ("license", info.license or "-"),
        ("source", " @ ".join(filter(None, [info.source_repo, info.source_revision])) or "-"),
        ("pulled from", origin.describe() if origin else "-"),
    ]
    for key, val in rows:
        table.add_row(key, Text(val))  # GGUF fields are printed as they are, never as markup
    Console().print(table)


def _first_line(text: str | None) -> str:
    if not text:
        return "-"
    line = text.strip().splitlines()[0]
    return line if len(line) <= 80 else line[:77] + "..."


def main(argv: list[str]) -> int:
    return run_app(app, argv, "inspect")
