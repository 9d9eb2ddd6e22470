"""`synatra-local run MODEL PROMPT`: one reply, streamed to stdout."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._app import run_app, stderr
from ._engine import format_stats, generation_options, load_engine, read_json_schema
from .options import (
    Batch,
    Ctx,
    GpuLayers,
    Json,
    JsonSchema,
    KvType,
    MaxTokens,
    MinP,
    ModelArg,
    NoRepack,
    RepeatPenalty,
    Seed,
    Stop,
    System,
    Temperature,
    Template,
    Threads,
    TopK,
    TopP,
    Verbose,
)

app = typer.Typer(add_completion=False)


@app.command()
def run(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The message; `-` reads it from stdin.")],
    system: System = None,
    template: Template = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    top_k: TopK = 40,
    min_p: MinP = 0.05,
    repeat_penalty: RepeatPenalty = 1.1,
    seed: Seed = None,
    stop: Stop = None,
    json: Json = False,
    json_schema: JsonSchema = None,
    ctx: Ctx = 4096,
    threads: Threads = None,
    gpu_layers: GpuLayers = "auto",
    batch: Batch = 512,
    no_repack: NoRepack = False,
    kv_type: KvType = "f16",
    verbose: Verbose = False,
) -> None:
    """Answer one prompt with the model's own chat template; the reply streams to stdout."""
    schema = read_json_schema(json_schema)
    text = sys.stdin.read().rstrip("\n") if prompt == "-" else prompt
    engine = load_engine(
        model, ctx=ctx, threads=threads, gpu_layers=gpu_layers, template=template, verbose=verbose, batch=batch,
        no_repack=no_repack, conversation=False, kv_type=kv_type,
    )
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    options = generation_options(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repeat_penalty=repeat_penalty, seed=seed, stop=stop, json=json, json_schema=schema,
    )
    with engine.stream(messages, options) as generation:
        for piece in generation:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if verbose:
        stderr.print(format_stats(generation.stats))


def main(argv: list[str]) -> int:
    return run_app(app, argv, "run")
