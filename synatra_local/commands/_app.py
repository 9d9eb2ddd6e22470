"""What every command shares: running a Typer app, turning expected failures into one clean line.

Text that comes from users, files or models (names, paths, GGUF fields, messages) is printed literally: through
`escape` inside our own markup, or as a `Text`, never parsed as rich markup (`[/]` would raise, `[server]`
would vanish).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import typer
from rich.console import Console
from rich.markup import escape

from synatra_local.core.errors import SynatraError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, so that it unwinds as Ctrl-C does: every `finally` and
    `atomic_output` runs and no partial file is left (the default action would end the process on the spot)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one while cleaning up ends the process, as asked
    raise Terminated(signum)


@contextlib.contextmanager
def _unwinding_on_termination() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield
        return
    caught = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, _terminate) for s in caught}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_app(app: typer.Typer, argv: list[str], name: str) -> int:
    """Run a one-command Typer app; usage errors exit 2, SynatraError and OSError 1, Ctrl-C 130, SIGTERM and
    SIGHUP 128 + the signal, all without a traceback and without partial files."""
    command = typer.main.get_command(app)
    try:
        with _unwinding_on_termination():
            command.main(args=argv, prog_name=f"synatra-local {name}", standalone_mode=True)
    except Terminated as exc:
        stderr.print(f"stopped by {exc}", style="yellow")
        return 128 + exc.signum
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SynatraError as exc:
        report_error(exc)
        return 1
    except OSError as exc:
        report_error(SynatraError(str(exc), fix="check the path, its permissions and the free disk space"))
        return 1
    except KeyboardInterrupt:
        stderr.print("interrupted", style="yellow")
        return 130
    return 0


def report_error(exc: SynatraError) -> None:
    stderr.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
    if exc.fix:
        stderr.print(f"[dim]fix:[/] {escape(exc.fix)}", markup=True, soft_wrap=True)
