"""`synatra-local chat MODEL`: a terminal chat that streams replies and edits Korean input well."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

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

if TYPE_CHECKING:
    from synatra_local.core.errors import SynatraError
    from synatra_local.runtime.conversation import Conversation
    from synatra_local.runtime.engine import Engine

app = typer.Typer(add_completion=False)
HELP = (
    "commands: /reset  /system TEXT  /save FILE  /load FILE  /stats  /exit\n"
    "Enter sends; Alt+Enter (or Esc then Enter) adds a line; Ctrl-C stops a reply; Ctrl-D exits."
)


@app.command()
def chat(
    model: ModelArg,
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
    web: Annotated[
        bool, typer.Option("--web", help="Chat in the browser instead: serve the chat page on a free loopback port "
                           "and open it (sampling is then set in the page).")
    ] = False,
) -> None:
    """Chat in the terminal (or, with --web, in the browser); replies stream as they are generated."""
    from synatra_local.runtime.conversation import Conversation

    schema = read_json_schema(json_schema)
    if web:
        import synatra_local.server  # noqa: F401  (without the `server` extra: one error now, before the load)
    engine = load_engine(model, ctx=ctx, threads=threads, gpu_layers=gpu_layers, template=template, verbose=verbose,
                         batch=batch, no_repack=no_repack, kv_type=kv_type)
    if web:
        _chat_in_browser(engine, verbose)
        return
    options = generation_options(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repeat_penalty=repeat_penalty, seed=seed, stop=stop, json=json, json_schema=schema,
    )
    conversation = Conversation(engine, system=system, options=options)
    stderr.print(f"[dim]{escape(engine.path.name)} · template {escape(engine.template.name)} · {HELP}[/]")
    read = _line_reader()
    while True:
        try:
            text = read()
        except EOFError:
            break
        except KeyboardInterrupt:
            continue
        if not text.strip():
            continue
        if text.startswith("/"):
            if not _command(text.strip(), conversation):
                break
            continue
        _reply(conversation, text, verbose)


def _chat_in_browser(engine: Engine, verbose: bool) -> None:
    """`serve` on a free loopback port, without a key (only this machine can reach it), and open the page."""
    import webbrowser

    from synatra_local.server.run import serve

    def ready(url: str) -> None:
        stderr.print(f"chat page: {url}/  (opening it in the browser; Ctrl-C stops)", markup=False, soft_wrap=True)
        # in a thread: a text-mode browser (lynx, w3m) would otherwise hold the server's event loop
        threading.Thread(target=webbrowser.open, args=(f"{url}/",), daemon=True).start()

    try:
        serve(engine, host="127.0.0.1", port=0, verbose=verbose, on_ready=ready)
    finally:
        engine.close()


def _reply(conversation: Conversation, text: str, verbose: bool) -> None:
    """One turn; a failure the user can fix (a message longer than the context, ...) is said, the session stays."""
    from synatra_local.core.errors import SynatraError

    stream = conversation.send(text)
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        sys.stdout.write(" [stopped]")
    except SynatraError as exc:
        stream.close()
        _say_error(exc)
        return
    sys.stdout.write("\n")
    stats = conversation.last_stats
    if stats is not None and stats.dropped_turns:
        stderr.print(f"[yellow]context full: dropped the {stats.dropped_turns} oldest turn(s)[/]")
    if verbose and stats is not None:
        stderr.print(f"[dim]{escape(format_stats(stats))}[/]")


def _line_reader() -> Callable[[], str]:
    """prompt_toolkit on a terminal (wide characters, IME, history, multi-line); plain lines otherwise."""
    if not sys.stdin.isatty():
        return _read_plain
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event) -> None:  # type: ignore[no-untyped-def]
        event.current_buffer.insert_text("\n")

    @bindings.add("enter")
    def _submit(event) -> None:  # type: ignore[no-untyped-def]
        event.current_buffer.validate_and_handle()

    session: PromptSession[str] = PromptSession(
        history=InMemoryHistory(), key_bindings=bindings, multiline=True,
        prompt_continuation=lambda width, line, wrap: "." * (width - 1) + " ",
    )
    return lambda: session.prompt(">>> ")


def _read_plain() -> str:
    sys.stdout.write(">>> ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    if line.strip() == '"""':
        lines = []
        while (more := sys.stdin.readline()) and more.strip() != '"""':
            lines.append(more)
        return "".join(lines).rstrip("\n")
    return line.rstrip("\n")


def _command(line: str, conversation: Conversation) -> bool:
    """Run a /command; False means exit."""
    from synatra_local.core.errors import SynatraError

    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name in {"/exit", "/quit", "/bye"}:
            return False
        if name == "/reset":
            conversation.reset()
            stderr.print("[dim]conversation cleared[/]")
        elif name == "/system":
            conversation.system = arg or None
            conversation.reset()
            stderr.print(f"[dim]system prompt {'set' if arg else 'cleared'}; conversation cleared[/]")
        elif name == "/save" and arg:
            stderr.print(f"[dim]saved to {escape(str(conversation.save(Path(arg))))}[/]")
        elif name == "/load" and arg:
            conversation.load(Path(arg))
            stderr.print(f"[dim]loaded {len(conversation.messages)} messages from {escape(arg)}[/]")
        elif name == "/stats":
            stats = conversation.last_stats
            stderr.print(format_stats(stats) if stats else "no reply yet", markup=False)
        else:
            stderr.print(HELP)
    except SynatraError as exc:
        _say_error(exc)
    return True


def _say_error(exc: SynatraError) -> None:
    stderr.print(f"[red]error:[/] {escape(exc.message)}" + (f" [dim]({escape(exc.fix)})[/]" if exc.fix else ""))


def main(argv: list[str]) -> int:
    return run_app(app, argv, "chat")
