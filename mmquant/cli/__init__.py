"""The ``mmquant`` command line (typer + rich).

Each command group lives in its own module and is also callable as a plain function, so tests call
``main([...])`` and the functions directly. Library code never prints: the CLI owns tables and
progress bars.
"""

from __future__ import annotations

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
    "mmquant.cli.checkpoint",
]


def make_console(stderr: bool = False):
    """A rich console; 160 columns wide when the output is not a terminal (pipes, files, CI logs)."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def _load_commands() -> None:
    from mmquant.core import import_plugins

    import_plugins(COMMAND_MODULES, "CLI commands (mmquant.cli.COMMAND_MODULES)")


# Errors of the user or of the input files; each becomes one ``error: ...`` line and exit status 2.
# (Programming errors keep their traceback.) FormatError is a ValueError; OSError covers missing
# files, folders given as files, permissions and full disks.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    OSError,
    OverflowError,
    RecursionError,
    MemoryError,
)
EXIT_USER_ERROR = 2
_MAX_ERROR_CHARS = 2000


def _click_errors() -> tuple[type[Exception], type[Exception]]:
    """(ClickException, UsageError) of the click that typer runs on (its own copy since 0.20)."""
    mro = typer.BadParameter.__mro__
    base = next(c for c in mro if c.__name__ == "ClickException")
    usage = next(c for c in mro if c.__name__ == "UsageError")
    return base, usage


def error_message(exc: BaseException) -> str:
    """The one-line message printed for a user error ``exc`` (without the ``error:`` prefix)."""
    from mmquant.cli.checks import plain

    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        msg = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            msg += f" (-> {exc.filename2})"
    elif isinstance(exc, KeyError):
        msg = f"missing entry {exc.args[0]!r}" if exc.args else "missing entry"
    elif isinstance(exc, RecursionError):
        msg = "input nested too deeply to read"
    elif isinstance(exc, MemoryError):
        msg = "not enough memory for this input"
    else:
        msg = str(exc) or type(exc).__name__
    line = plain(" ".join(msg.split()))
    if len(line) > _MAX_ERROR_CHARS:
        line = line[:_MAX_ERROR_CHARS] + f"... ({len(line) - _MAX_ERROR_CHARS} more characters)"
    return line


def print_error(message: str) -> None:
    """Write ``error: MESSAGE`` as one plain line (no markup, no colour) to stderr."""
    import sys

    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    0 on success; 2 for every user error (unknown command or option, missing argument, bad value,
    missing or malformed file, an output that would overwrite an input), reported as one
    ``error: ...`` line on stderr without a traceback; 1 when aborted. ``mmquant`` or a command
    group without a command prints its help on stdout and returns 0.
    """
    _load_commands()
    click_error, usage_error = _click_errors()
    try:
        rv = app(args=argv, prog_name="mmquant", standalone_mode=False)
    except SystemExit as exc:  # typer exits on a broken pipe
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click_error as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            help_text = ctx.get_help()  # typer's rich help prints itself and returns ""
            if help_text:
                typer.echo(help_text)
            return 0
        hint = f" (see '{ctx.command_path} --help')" if isinstance(exc, usage_error) and ctx else ""
        print_error(error_message(Exception(exc.format_message())) + hint)
        return EXIT_USER_ERROR
    except typer.Abort:
        print_error("aborted")
        return 1
    except USER_ERRORS as exc:
        print_error(error_message(exc))
        return EXIT_USER_ERROR
    return rv if isinstance(rv, int) else 0
