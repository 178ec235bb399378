"""What the command line checks before it reads or writes a file, and how it prints foreign text.

Every check raises an exception that :func:`mmquant.cli.main` turns into one ``error: ...`` line on
stderr and exit status 2: ``ValueError`` for a wrong name or suffix, ``FileNotFoundError`` /
``IsADirectoryError`` for a path that is missing or of the wrong kind.

Text that comes from a file or from the command line (matrix names, specs, paths) is passed
through :func:`plain` before it reaches the terminal, and through :func:`text` before it reaches
rich, so that it can neither inject rich markup (``[/]``) nor terminal control sequences
(``ESC [ 31 m``, carriage returns, bidirectional overrides).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.text import Text

__all__ = [
    "check_input_file",
    "check_output_file",
    "parse_rates",
    "plain",
    "same_file",
    "text",
]


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def plain(value: object) -> str:
    r"""``str(value)`` with every non-printable character written as a Python escape.

    Control characters (``ESC``, newline, carriage return, backspace ...), format characters
    (bidirectional overrides, zero-width joiners), line and paragraph separators and unassigned
    or surrogate code points become ``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN``; everything
    :meth:`str.isprintable` accepts, and the plain space, is kept as it is.

    Examples
    --------
    >>> plain("A\x1b[31m")
    'A\\x1b[31m'
    >>> plain("spec [/]")
    'spec [/]'
    """
    s = str(value)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in s)


def text(value: object, style: str = "") -> Text:
    """A rich :class:`~rich.text.Text` of :func:`plain` ``(value)``: printed literally, no markup."""
    return Text(plain(value), style=style)


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (symbolic and hard links included)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # unreadable path or a symlink loop: compare the spelling
        return os.path.abspath(a) == os.path.abspath(b)


def _suffixes(suffixes: Sequence[str]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


def _got(path: Path) -> str:
    return f"has suffix {plain(path.suffix)!r}" if path.suffix else "has no suffix"


def check_input_file(path: Path, what: str, suffixes: Sequence[str] | None = None) -> Path:
    """Check that ``path`` is an existing regular file (ending in one of ``suffixes`` if given).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    IsADirectoryError
        ``path`` is a folder.
    ValueError
        ``path`` is not a regular file, or its suffix is not one of ``suffixes``.
    """
    if not path.exists():
        raise FileNotFoundError(f"no such file: {plain(path)}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {plain(path)!r} is a folder, expected a file")
    if not path.is_file():
        raise ValueError(f"{what} {plain(path)!r} is not a regular file")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {plain(path)!r} {_got(path)}: expected {_suffixes(suffixes)}")
    return path


def check_output_file(
    path: Path, what: str, suffixes: Sequence[str], inputs: Iterable[Path | None] = ()
) -> Path:
    """Check that ``path`` can take the output: right suffix, not a folder, not one of ``inputs``.

    The command writes a file of the kind its suffix names, so the suffix must be one of
    ``suffixes`` (case-insensitive); its folder must exist; and it must not be (by name, symbolic
    or hard link) any of the command's ``inputs``: a command never overwrites what it reads.

    Raises
    ------
    ValueError
        Wrong suffix, or ``path`` is one of the inputs.
    IsADirectoryError
        ``path`` is a folder.
    FileNotFoundError
        The folder of ``path`` does not exist.
    """
    if path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{what} {plain(path)!r} {_got(path)}: expected a name ending in {_suffixes(suffixes)}"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{what} {plain(path)!r} is a folder, expected a file name")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {plain(path)!r}: no such folder {plain(folder)!r}")
    for src in inputs:
        if src is not None and same_file(path, src):
            raise ValueError(
                f"{what} {plain(path)!r} is the input {plain(src)!r}: refusing to overwrite it, "
                "choose another output name"
            )
    return path


def parse_rates(text: str | None) -> list[float] | None:
    """Parse ``"2,3,4"`` into ``[2.0, 3.0, 4.0]`` (``None`` or empty: the families' defaults)."""
    if text is None or not text.strip():
        return None
    out = []
    for item in text.split(","):
        try:
            r = float(item)
        except ValueError:
            raise ValueError(f"--rates must be comma-separated numbers, got {item!r}") from None
        if not 0 < r <= 16:
            raise ValueError(f"rates must be in (0, 16] bits/entry, got {r}")
        out.append(r)
    return out
