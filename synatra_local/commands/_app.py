"""What every command shares: running a Typer app, turning expected failures into one clean line."""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from synatra_local.core.errors import SynatraError

stderr = Console(stderr=True, highlight=False)


def run_app(app: typer.Typer, argv: list[str], name: str) -> int:
    """Run a one-command Typer app; SynatraError and Ctrl-C exit cleanly, with no traceback."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name=f"synatra-local {name}", standalone_mode=False)
    except SynatraError as exc:
        report_error(exc)
        return 1
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    except KeyboardInterrupt:
        stderr.print("interrupted", style="yellow")
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 1
    return 0


def report_error(exc: SynatraError) -> None:
    stderr.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
    if exc.fix:
        stderr.print(f"[dim]fix:[/] {exc.fix}", markup=True, soft_wrap=True)
