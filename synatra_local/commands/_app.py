"""What every command shares: running a Typer app, turning expected failures into one clean line."""

from __future__ import annotations

import typer
from rich.console import Console

from synatra_local.core.errors import SynatraError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def run_app(app: typer.Typer, argv: list[str], name: str) -> int:
    """Run a one-command Typer app; usage errors exit 2, SynatraError and OSError 1, Ctrl-C 130, no traceback."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name=f"synatra-local {name}", standalone_mode=True)
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
    stderr.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
    if exc.fix:
        stderr.print(f"[dim]fix:[/] {exc.fix}", markup=True, soft_wrap=True)
