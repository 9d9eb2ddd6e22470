"""Option types shared by several commands, so that each means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Force = Annotated[bool, typer.Option("--force", help="Overwrite outputs that already exist.")]
Threads = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: one per physical core).")]
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
ModelArg = Annotated[
    str,
    typer.Argument(
        help="A .gguf path, a model name from `synatra-local list`, or a hub reference owner/repo:QUANT "
        "(run, chat and serve pull it first when it is not in the models folder)."
    ),
]
OutputDir = Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the outputs.")]

Ctx = Annotated[int, typer.Option("--ctx", "-c", help="Context size in tokens.")]
GpuLayers = Annotated[
    str, typer.Option("--gpu-layers", "-ngl", help="Layers on the GPU: auto, all, or a number (0 = CPU).")
]
Batch = Annotated[int, typer.Option("--batch", help="Prompt tokens evaluated per batch.")]
NoRepack = Annotated[
    bool,
    typer.Option(
        "--no-repack",
        help="Skip llama.cpp's CPU weight repacking: about the model's size less RAM and a near-instant load, "
        "somewhat slower decoding.",
    ),
]
Template = Annotated[
    str | None,
    typer.Option("--template", help="Prompt format: synatra-v0.1, synatra-v0.2, chatml, jinja, or a .jinja file."),
]
System = Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option("--temperature", "--temp", help="Sampling temperature (0 = greedy).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold.")]
TopK = Annotated[int, typer.Option("--top-k", help="Sample from the k most likely tokens.")]
MinP = Annotated[float, typer.Option("--min-p", help="Drop tokens below this share of the top token's probability.")]
RepeatPenalty = Annotated[float, typer.Option("--repeat-penalty", help="Penalty for repeated tokens (1 = off).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed; the same seed gives the same text.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")]
