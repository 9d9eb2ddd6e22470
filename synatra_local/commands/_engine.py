"""Building an Engine and generation options from the shared command-line options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.text import Text

from ._app import stderr

if TYPE_CHECKING:
    from synatra_local.runtime.engine import Engine, GenerationOptions, GenerationStats


def load_engine(
    model: str,
    *,
    ctx: int,
    threads: int | None,
    gpu_layers: str,
    template: str | None,
    verbose: bool,
    batch: int = 512,
    no_repack: bool = False,
    conversation: bool = True,
    parallel: int = 1,
    kv_type: str = "f16",
) -> Engine:
    from synatra_local.runtime.engine import Engine

    path = model_path(model)
    with stderr.status(Text(f"loading {model}…"), spinner="dots"):
        engine = Engine(
            path,
            n_ctx=ctx,
            threads=threads,
            batch=batch,
            gpu_layers=gpu_layers,
            template=template,
            prefill_turn_end=conversation,
            repack=not no_repack,
            parallel=parallel,
            kv_type=kv_type,  # type: ignore[arg-type]  # llama_backend checks the name
            verbose=verbose,
        )
    for warning in engine.template_decision.warnings:
        stderr.print(f"warning: {warning}", style="yellow", markup=False)
    if verbose or engine.offload.layers:
        stderr.print(f"[dim]{escape(engine.offload.reason)}; template {escape(engine.template.name)}[/]")
    if verbose:
        stderr.print(f"prompt format {engine.template_decision.describe()}", style="dim", markup=False)
    if verbose or parallel > 1:
        stderr.print(kv_summary(engine), style="dim", markup=False)
    return engine


def kv_summary(engine: Engine) -> str:
    """What the KV cache holds and costs: sequences × context, its type, and its size."""
    return (
        f"KV cache: {engine.parallel} sequence{'s' if engine.parallel > 1 else ''} × {engine.n_ctx} tokens, "
        f"{engine.kv_type}, {engine.kv_bytes / 2**20:.0f} MiB"
    )


def model_path(model: str) -> str:
    """A local model as given; else a hub reference (`owner/repo:QUANT`) pulled first, as `ollama run` does."""
    from pathlib import Path

    from synatra_local.core.errors import ModelFileError, SynatraError
    from synatra_local.core.hub import parse_hub_ref
    from synatra_local.runtime.store import models_dir, resolve_model

    try:
        return str(resolve_model(model))
    except ModelFileError:
        ref = parse_hub_ref(model)
        if ref is None or Path(model).exists():
            raise
    from synatra_local.runtime.pull import pull

    from ._progress import TerminalProgress

    stderr.print(f"{model} is not in the models folder: pulling it", markup=False)
    try:
        return str(pull(ref, progress=TerminalProgress()))
    except SynatraError as exc:
        raise SynatraError(
            f"no model {model!r} in {models_dir()}, and pulling it failed: {exc.message}", fix=exc.fix
        ) from exc

def generation_options(
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    stop: list[str] | None,
    json: bool = False,
    json_schema: dict | None = None,
) -> GenerationOptions:
    from synatra_local.runtime.engine import GenerationOptions

    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=seed,
        stop=tuple(stop or ()),
        json=json or json_schema is not None,
        json_schema=json_schema,
    )


def read_json_schema(path: Path | None) -> dict | None:
    """The schema of `--json-schema FILE`, checked before any model loads; every failure names the file."""
    import json

    from synatra_local.core.errors import SynatraError
    from synatra_local.runtime.structured import StructuredOutputError, json_grammar

    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SynatraError(f"cannot read the JSON schema file {path}: {reason}",
                           fix="give --json-schema a readable UTF-8 .json file") from exc
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise SynatraError(f"the JSON schema file {path} is not valid JSON: {exc}",
                           fix="fix the JSON in that file") from exc
    try:
        json_grammar(schema)
    except StructuredOutputError as exc:
        raise SynatraError(f"the JSON schema file {path}: {exc.message}", fix=exc.fix) from exc
    return schema


def format_stats(stats: GenerationStats) -> str:
    return (
        f"prompt {stats.prompt_tokens} tok ({stats.evaluated_prompt_tokens} evaluated), "
        f"reply {stats.generated_tokens} tok, first token {stats.time_to_first_token * 1000:.0f} ms, "
        f"{stats.tokens_per_second:.1f} tok/s, stop: {stats.stop_reason}"
        + (f", dropped {stats.dropped_turns} old turn(s)" if stats.dropped_turns else "")
    )
