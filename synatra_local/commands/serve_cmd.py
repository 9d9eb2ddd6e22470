"""`synatra-local serve MODEL`: an OpenAI-compatible HTTP API over one model (needs the `server` extra)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ._app import run_app, stderr
from ._engine import load_engine
from .options import Batch, Ctx, GpuLayers, KvType, ModelArg, NoRepack, Parallel, Template, Threads, Verbose, ranged

app = typer.Typer(add_completion=False)


@app.command()
def serve(
    model: ModelArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback only by default).")] = "127.0.0.1",
    port: Annotated[int, ranged("--port", "-p", name="port", help="Port to listen on (0 picks a free one).")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="SYNATRA_LOCAL_API_KEY",
            help="Require `Authorization: Bearer KEY` on every request but /health.",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Allow browser requests from this origin (repeatable; default: none)."),
    ] = None,
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="The model name clients see (default: the file name).")
    ] = None,
    max_body_bytes: Annotated[
        int, ranged("--max-body-bytes", name="max_body_bytes", help="Largest request body accepted (larger: 413).")
    ] = 1 << 20,
    max_tokens_cap: Annotated[
        int, ranged("--max-tokens-cap", name="max_tokens_cap", help="Most tokens one request may ask for.")
    ] = 2048,
    stream_interval_ms: Annotated[
        float,
        ranged("--stream-interval-ms", name="stream_interval_ms",
               help="Shortest time between streamed events; faster text is merged (0: an event per token)."),
    ] = 20,
    no_web: Annotated[bool, typer.Option("--no-web", help="Do not serve the chat page at /.")] = False,
    ctx: Ctx = 4096,
    parallel: Parallel = 4,
    kv_type: KvType = "f16",
    threads: Threads = None,
    gpu_layers: GpuLayers = "auto",
    batch: Batch = 512,
    no_repack: NoRepack = False,
    template: Template = None,
    verbose: Verbose = False,
) -> None:
    """Serve MODEL over HTTP: /v1/chat/completions, /v1/completions, /v1/models, /health and a chat page at /.

    Point any OpenAI client at the printed base URL (…/v1). Up to --parallel replies are decoded together; more
    requests wait their turn in arrival order.
    """
    # before the (slow) model load: without the `server` extra, or with the port taken, this fails at once
    from synatra_local.server.run import bind, is_loopback
    from synatra_local.server.run import serve as serve_engine

    sock = bind(host, port)
    try:
        engine = load_engine(model, ctx=ctx, threads=threads, gpu_layers=gpu_layers, template=template,
                             verbose=verbose, batch=batch, no_repack=no_repack, parallel=parallel,
                             kv_type=kv_type)
    except BaseException:
        sock.close()
        raise
    if not is_loopback(host) and not api_key:
        stderr.print(f"[yellow]warning:[/] listening on {escape(host)} without --api-key: anyone who can reach it can "
                     "use it")

    def ready(url: str) -> None:
        page = "" if no_web else f"; chat page: {url}/"
        stderr.print(f"serving {model_id or engine.path.stem} on {url}  (OpenAI base URL: {url}/v1{page}; "
                     "Ctrl-C stops)", markup=False, soft_wrap=True)

    try:
        serve_engine(
            engine,
            model_id=model_id,
            host=host,
            port=port,
            api_key=api_key,
            cors_origins=cors_origin or (),
            max_body_bytes=max_body_bytes,
            max_tokens_cap=max_tokens_cap,
            stream_interval=stream_interval_ms / 1000,
            web=not no_web,
            verbose=verbose,
            on_ready=ready,
            sock=sock,
        )
    finally:
        engine.close()


def main(argv: list[str]) -> int:
    return run_app(app, argv, "serve")
