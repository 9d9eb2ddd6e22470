"""Option types shared by several commands, so that each means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Force = Annotated[bool, typer.Option("--force", help="Overwrite outputs that already exist.")]
Threads = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: all cores).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log and timing stats.")]
Revision = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
PromptFormat = Annotated[
    str | None,
    typer.Option(
        "--prompt-format",
        help="Record this prompt format instead of detecting it (synatra-v0.1, synatra-v0.2, chatml, jinja).",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ModelArg = Annotated[str, typer.Argument(help="A .gguf path, or a model name from `synatra-local list`.")]
OutputDir = Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the outputs.")]
