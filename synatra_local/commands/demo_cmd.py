"""`synatra-local demo` (what `make run` runs): the whole pipeline offline on a tiny random Synatra model."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ._app import run_app, stderr
from ._progress import TerminalProgress
from .options import OutputDir

app = typer.Typer(add_completion=False)
DEMO_QUESTION = "대한민국의 수도는 어디인가요?"


@app.command()
def demo(
    output_dir: OutputDir = Path("models"),
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 48,
) -> None:
    """Build a Synatra-V0.1-shaped checkpoint (random weights, real Mistral v1 tokenizer, PyTorch .bin shards),
    convert and quantize it to Q4_K_M and Q8_0 in the models folder, and stream one Korean chat turn."""
    from synatra_local.convert import quantize
    from synatra_local.convert.tiny import build_checkpoint
    from synatra_local.runtime.engine import Engine, GenerationOptions

    stderr.print("[bold]synatra-local demo[/]: the weights are RANDOM, so the model's words are noise; "
                 "every file format, the tokenizer, the template and the pipeline are real.")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp) / "Synatra-V0.1-demo", version="v0.1", weights="bin", shards=2)
        stderr.print(f"checkpoint: {', '.join(sorted(p.name for p in folder.iterdir()))}", markup=False)
        paths = quantize(folder, ["Q4_K_M", "Q8_0"], output_dir=output_dir, force=True,
                         progress=TerminalProgress())
    for path in paths:
        print(path)
    engine = Engine(paths[0], n_ctx=512)
    messages = [{"role": "user", "content": DEMO_QUESTION}]
    stderr.print(f"template {engine.template.name}; prompt: {engine.render(messages)!r}", markup=False)
    sys.stdout.write(f"user> {DEMO_QUESTION}\nsynatra> ")
    with engine.stream(messages, GenerationOptions(max_tokens=max_tokens, seed=0)) as generation:
        for piece in generation:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    s = generation.stats
    stderr.print(f"[dim]{s.prompt_tokens} prompt tokens, {s.generated_tokens} generated, "
                 f"{s.tokens_per_second:.0f} tok/s, stop: {s.stop_reason}[/]")


def main(argv: list[str]) -> int:
    return run_app(app, argv, "demo")
