"""Option types shared by several commands, so that each means the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from synatra_local.runtime import limits


def in_range(name: str, flag: str) -> Callable[[Any], Any]:
    """A typer callback: the option's value, or one `error:` line naming the flag and its range (exit 1).

    (typer's own min/max would be a usage error: exit 2 and a boxed message.)
    """

    def check(value: Any) -> Any:
        limits.check_optional(name, value, label=flag)
        return value

    return check


def ranged(*flags: str, name: str, help: str) -> Any:
    """A numeric option checked against `limits.RANGES[name]` as it is parsed, before any model loads."""
    return typer.Option(*flags, callback=in_range(name, flags[0]), help=help)


Force = Annotated[bool, typer.Option("--force", help="Overwrite outputs that already exist.")]
Threads = Annotated[
    int | None, ranged("--threads", "-t", name="threads", help="CPU threads (default: one per physical core).")
]
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

Ctx = Annotated[int, ranged("--ctx", "-c", name="n_ctx", help="Context size in tokens.")]
GpuLayers = Annotated[
    str, typer.Option("--gpu-layers", "-ngl", help="Layers on the GPU: auto, all, or a number (0 = CPU).")
]
Batch = Annotated[int, ranged("--batch", name="batch", help="Prompt tokens evaluated per batch.")]
NoRepack = Annotated[
    bool,
    typer.Option(
        "--no-repack",
        help="Skip llama.cpp's CPU weight repacking: about the model's size less RAM and a near-instant load, "
        "somewhat slower decoding.",
    ),
]
KvType = Annotated[
    str,
    typer.Option(
        "--kv-type", help="KV cache type: f16, q8_0 (half the memory) or q4_0 (a quarter); llama.cpp's type_k/type_v."
    ),
]
Parallel = Annotated[
    int,
    ranged("--parallel", "-np", name="parallel",
           help="Replies decoded together (continuous batching); each gets its own --ctx of KV cache."),
]
Template = Annotated[
    str | None,
    typer.Option("--template", help="Prompt format: synatra-v0.1, synatra-v0.2, chatml, jinja, or a .jinja file."),
]
System = Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")]
MaxTokens = Annotated[int, ranged("--max-tokens", "-n", name="max_tokens", help="Most tokens to generate.")]
Temperature = Annotated[
    float, ranged("--temperature", "--temp", name="temperature", help="Sampling temperature (0 = greedy).")
]
TopP = Annotated[float, ranged("--top-p", name="top_p", help="Nucleus sampling threshold.")]
TopK = Annotated[int, ranged("--top-k", name="top_k", help="Sample from the k most likely tokens.")]
MinP = Annotated[
    float, ranged("--min-p", name="min_p", help="Drop tokens below this share of the top token's probability.")
]
RepeatPenalty = Annotated[
    float, ranged("--repeat-penalty", name="repeat_penalty", help="Penalty for repeated tokens (1 = off).")
]
Seed = Annotated[int | None, ranged("--seed", name="seed", help="Random seed; the same seed gives the same text.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")]
Json = Annotated[bool, typer.Option("--json", help="Reply with one JSON object (llama.cpp's grammar sampler).")]
JsonSchema = Annotated[
    Path | None,
    typer.Option("--json-schema", help="Reply with JSON valid against the JSON Schema in this file (implies --json)."),
]


def read_text_file(path: Path) -> str:
    """A `--text FILE` option's contents: UTF-8, or one error line saying it is not."""
    from synatra_local.core.errors import SynatraError

    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SynatraError(f"{path} is not UTF-8 text", fix="convert it to UTF-8") from exc
