"""The ``mmquant`` command line (typer + rich).

Each command group lives in its own module and is also callable as a plain function, so tests call
``main([...])`` and the functions directly. Library code never prints: the CLI owns tables and
progress bars.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="mmquant",
    help="Quantization for matrix multiplication, measured against the information-theoretic limit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands to ``app`` (each imports ``app`` from here and decorates functions).
COMMAND_MODULES = [
    "mmquant.cli.compare",
    "mmquant.cli.theory_cmd",
    "mmquant.cli.reproduce",
    "mmquant.cli.weights",
    "mmquant.cli.storage",
]


def make_console(stderr: bool = False):
    """A rich console; 160 columns wide when the output is not a terminal (pipes, files, CI logs)."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def _load_commands() -> None:
    for mod in COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    _load_commands()
    try:
        app(args=argv, prog_name="mmquant", standalone_mode=False)
    except SystemExit as exc:  # pragma: no cover - typer exits on --help
        return int(exc.code or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        return 2
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return 0
