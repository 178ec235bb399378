"""``mmquant quantize`` / ``dequantize`` / ``inspect``: arrays to ``.mmq`` files and back.

Inputs of ``quantize``: ``.npy`` (one array, stored under the name ``x``), ``.npz`` and
``.safetensors`` (every array, or those named with ``--key``, stored under their own names; float
dtypes F64/F32/F16/BF16/F8 and integer dtypes are read). The whole array is quantized at once (no
chunking: per-tensor scales would change); the progress bar advances per array.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmquant.cli import app
from mmquant.cli.checks import check_input_file, check_output_file, plain, text
from mmquant.io import DEFAULT_NAME, read_info

__all__ = ["dequantize_cmd", "inspect_cmd", "quantize_cmd", "read_arrays", "write_arrays"]

INPUT_SUFFIXES = (".npy", ".npz", ".safetensors")
MMQ_SUFFIXES = (".mmq",)
ARRAY_SUFFIXES = (".npy", ".npz")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, memory-mapped (BF16/F8 via ml_dtypes).

    The checkpoint reader's checked header (:func:`mmquant.checkpoints.safetensors_file.
    read_header`: dtypes, shapes, offsets inside the data, no overlaps) comes first, so no tensor
    is sliced from a header that does not fit the file.
    """
    from mmquant.checkpoints.safetensors_file import read_header, read_tensor

    header = read_header(path)
    return {name: read_tensor(e, path) for name, e in header.tensors.items()}


def read_arrays(path: Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of an ``.npy`` / ``.npz`` / ``.safetensors`` file, by name (``--key`` selects).

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        ``path`` is missing or a folder.
    ValueError
        Unsupported suffix, unknown ``keys``, no arrays, or a file that numpy / the safetensors
        reader cannot read (truncated, damaged, pickled objects).
    """
    check_input_file(path, "input", INPUT_SUFFIXES)
    suffix = path.suffix.lower()
    if suffix == ".npy" and keys:
        raise ValueError("--key applies to .npz and .safetensors inputs, not .npy")
    try:
        if suffix == ".npy":
            return {DEFAULT_NAME: np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                wanted = [k for k in keys if k in names] if keys else names
                arrays = {k: z[k] for k in wanted}
        else:
            arrays = _read_safetensors(path)
            names = list(arrays)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        msg = str(exc)
        raise ValueError(
            msg if msg.startswith(str(path)) else f"{path}: not a readable {suffix} file ({msg})"
        ) from None
    if keys:
        missing = [k for k in keys if k not in names]
        if missing:
            raise ValueError(
                f"{path}: no array named {', '.join(map(repr, missing))}; "
                f"available: {', '.join(map(repr, names))}"
            )
        arrays = {k: arrays[k] for k in keys}
    if not arrays:
        raise ValueError(f"{path} holds no arrays")
    return arrays


def _progress(console: Console) -> Progress:
    """A transient progress bar, shown only on a terminal (nothing at all in pipes and logs)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one array as ``.npy`` or several as ``.npz``, atomically (temporary file + rename).

    The ``.npz`` is written member by member (``NAME.npy``, uncompressed, as :func:`numpy.savez`
    does) so that every name is kept, including those :func:`numpy.savez` would take as its own
    keyword arguments (``file``, ``allow_pickle``).
    """
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"output {plain(path)!r} must end in .npy or .npz")
    if suffix == ".npy" and len(arrays) != 1:
        raise ValueError(f"a .npy file holds one array, got {len(arrays)}")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if suffix == ".npy":
                np.lib.format.write_array(fh, next(iter(arrays.values())), allow_pickle=False)
            else:
                with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for name, arr in arrays.items():
                        with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                            np.lib.format.write_array(member, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_storable(name: str) -> None:
    """Refuse, before any work, an array name that :func:`mmquant.save` would refuse."""
    if not name or "/" in name or name != name.strip():
        raise ValueError(
            f"array name {name!r} cannot be stored in an .mmq file (empty, contains '/' or "
            "starts or ends with white space)"
        )


@app.command("quantize")
def quantize_cmd(
    src: Path = typer.Argument(..., help="Input .npy, .npz or .safetensors file."),
    dst: Path = typer.Argument(..., help="Output .mmq file (never one of the inputs)."),
    spec: str = typer.Option(..., "--spec", help='Quantizer spec, e.g. "int:bits=4,group=32".'),
    key: list[str] = typer.Option(
        None, "--key", help="Array(s) to quantize from an .npz/.safetensors input (repeatable)."
    ),
) -> None:
    """Quantize the arrays of SRC along their last axis and write them to the .mmq file DST."""
    from mmquant import core, io
    from mmquant.metrics import sqnr_db

    check_input_file(src, "input", INPUT_SUFFIXES)
    check_output_file(dst, "output", MMQ_SUFFIXES, inputs=[src])
    q = core.get(spec)
    arrays = read_arrays(src, key or None)
    for name in arrays:
        _check_storable(name)
    console = Console()
    encoded = {}
    table = Table(title=text(f"{src.name} → {dst.name} ({q.spec})"))
    for col in ("name", "shape", "bits/entry", "SQNR dB"):
        table.add_column(col, justify="left" if col == "name" else "right")
    with _progress(Console(stderr=True)) as progress:
        task = progress.add_task("quantizing", total=len(arrays))
        for name, arr in arrays.items():
            progress.update(task, description=escape(f"quantizing {plain(name)}"))
            enc = q.encode(arr)
            encoded[name] = enc
            ref = np.asarray(arr, dtype=np.float64)
            table.add_row(
                text(name),
                "×".join(map(str, enc.shape)),
                f"{enc.bits_per_entry:.4f}",
                f"{sqnr_db(ref, q.decode(enc)):.2f}",
            )
            progress.advance(task)
    size = io.save(dst, encoded)
    console.print(table)
    console.print(text(f"wrote {dst} ({size} bytes)"))


@app.command("dequantize")
def dequantize_cmd(
    src: Path = typer.Argument(..., help="Input .mmq file or quantize-model folder."),
    dst: Path = typer.Argument(
        ..., help="Output .npy (one matrix) or .npz (all matrices); a new folder for a folder SRC."
    ),
    name: str = typer.Option(None, "--name", help="Matrix to write (default: all / the only one)."),
) -> None:
    """Decode the matrices of the .mmq file SRC and write them to DST (.npy or .npz).

    SRC may also be a folder written by ``mmquant quantize-model``: DST is then a new folder that
    receives the decoded checkpoint (safetensors, same names, shapes and dtypes, with the
    configuration and tokenizer files), or an .npz of the decoded quantized matrices.
    """
    from mmquant import core, io

    if src.is_dir():
        _check_export_folder(src)
        _dequantize_folder(src, dst, name)
        return
    check_input_file(src, "input")
    check_output_file(dst, "output", ARRAY_SUFFIXES, inputs=[src])
    info = read_info(src)
    names = [name] if name is not None else list(info.matrices)
    if name is not None and name not in info.matrices:
        raise ValueError(
            f"{src} has no matrix {name!r}; it holds {', '.join(map(repr, info.matrices))}"
        )
    if dst.suffix.lower() == ".npy" and len(names) != 1:
        raise ValueError(
            f"{src} holds {len(names)} matrices ({', '.join(map(repr, names))}): "
            "write a .npz or pass --name"
        )
    out = {}
    with _progress(Console(stderr=True)) as progress:
        task = progress.add_task("decoding", total=len(names))
        records = io.load(src, names=names, verify=False)
        for n, enc in records.items():
            progress.update(task, description=escape(f"decoding {plain(n)}"))
            arr = core.get(enc.spec).decode(enc)
            if arr.shape != enc.shape or not np.isfinite(arr).all():
                raise io.FormatError(f"{src}: matrix {n!r} does not decode consistently")
            out[n] = arr
            progress.advance(task)
    write_arrays(dst, out)
    Console().print(text(f"wrote {dst} ({', '.join(names)})"))


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="An .mmq file, or a folder of mmquant quantize-model."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON instead."),
    verify: bool = typer.Option(
        False, "--verify", help="Also read every array (CRC32 checks) and decode each matrix."
    ),
) -> None:
    """Show what an .mmq file holds (checks the header; --verify checks the data too).

    Names, specs and versions come from the file: they are printed as plain text, with control
    characters escaped (``--json`` escapes them as JSON does).
    """
    from mmquant import io

    if path.is_dir():
        _check_export_folder(path)
        _inspect_folder(path, as_json, verify)
        return
    check_input_file(path, "input")
    info = read_info(path)
    if verify:
        io.load(path, verify=True)  # raises FormatError naming the problem
    if as_json:
        rec = {
            "path": info.path,
            "format_version": info.format_version,
            "library_version": info.library_version,
            "file_bytes": info.file_bytes,
            "header_bytes": info.header_bytes,
            "matrices": {
                n: {
                    "spec": m.spec,
                    "shape": list(m.shape),
                    "seed": m.seed,
                    "bytes": m.nbytes,
                    "bits_per_entry": m.bits_per_entry,
                    "stats": m.stats,
                }
                for n, m in info.matrices.items()
            },
        }
        typer.echo(_json(rec))
        return
    console = Console(width=max(120, Console().width))
    console.print(
        text(
            f"{path.name}: mmq format v{info.format_version}, written by mmquant "
            f"{info.library_version}; {info.file_bytes} bytes ({info.header_bytes} header)"
            + ("; data verified (CRC32 + decode)" if verify else "")
        )
    )
    table = Table()
    for col in ("name", "spec", "shape", "bits/entry", "bytes", "seed"):
        table.add_column(col, justify="left" if col in ("name", "spec") else "right")
    for n, m in info.matrices.items():
        table.add_row(
            text(n),
            text(m.spec),
            "×".join(map(str, m.shape)),
            f"{m.bits_per_entry:.4f}",
            str(m.nbytes),
            text("-" if m.seed is None else m.seed),
        )
    console.print(table)


def _json(rec: Any) -> str:
    """``rec`` as standard JSON: NaN and ±Inf (which a header may carry in its stats) become null."""

    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(rec), indent=2, allow_nan=False)


def _check_export_folder(path: Path) -> None:
    """A folder input must be one written by ``mmquant quantize-model``."""
    from mmquant.checkpoints.export import MANIFEST_NAME

    if not (path / MANIFEST_NAME).is_file():
        raise IsADirectoryError(
            f"input {plain(path)!r} is a folder, but not one written by mmquant quantize-model "
            f"(no {MANIFEST_NAME}): expected an .mmq file or such a folder"
        )


def _dequantize_folder(src: Path, dst: Path, name: str | None) -> None:
    """``mmquant dequantize FOLDER DST``: a decoded checkpoint folder, or an .npz of the matrices."""
    from mmquant import core, io
    from mmquant.checkpoints.export import dequantize_folder, read_manifest

    manifest = read_manifest(src)
    if dst.suffix.lower() not in ARRAY_SUFFIXES:
        if name is not None:
            raise ValueError("--name applies to .npy/.npz outputs")
        files = dequantize_folder(src, dst)
        Console().print(text(f"wrote {dst} ({', '.join(files)})"))
        return
    check_output_file(dst, "output", ARRAY_SUFFIXES)
    quantized = {n: t for n, t in manifest["tensors"].items() if t["kind"] == "quantized"}
    names = [name] if name is not None else list(quantized)
    if name is not None and name not in quantized:
        raise ValueError(f"{src} has no quantized tensor {name!r}")
    if dst.suffix.lower() == ".npy" and len(names) != 1:
        raise ValueError(f"{src} holds {len(names)} quantized tensors: write a .npz or pass --name")
    out = {}
    for f in dict.fromkeys(quantized[n]["file"] for n in names):
        want = [n for n in names if quantized[n]["file"] == f]
        for n, enc in io.load(src / f, names=want, verify=False).items():
            out[n] = core.get(enc.spec).decode(enc)
    write_arrays(dst, out)
    Console().print(text(f"wrote {dst} ({len(out)} matrices)"))


def _inspect_folder(path: Path, as_json: bool, verify: bool) -> None:
    """``mmquant inspect FOLDER``: the tensors of a quantize-model folder, file by file."""
    from mmquant import io
    from mmquant.checkpoints.export import read_manifest

    manifest = read_manifest(path)
    infos = {}
    for f in sorted({t["file"] for t in manifest["tensors"].values() if t["kind"] == "quantized"}):
        infos[f] = read_info(path / f)
        if verify:
            io.load(path / f, verify=True)
    rows = []
    for n, t in manifest["tensors"].items():
        m = infos[t["file"]].matrices.get(n) if t["kind"] == "quantized" else None
        if t["kind"] == "quantized" and m is None:
            raise io.FormatError(f"{path}: tensor {n!r} is not in {t['file']}")
        rows.append((n, t, m))
    if as_json:
        rec = {
            "path": str(path),
            "source": manifest.get("source"),
            "tensors": {
                n: {**t, "bits_per_entry": None if m is None else m.bits_per_entry}
                for n, t, m in rows
            },
        }
        typer.echo(_json(rec))
        return
    console = Console(width=max(120, Console().width))
    q = [(t, m) for _, t, m in rows if m is not None]
    entries = sum(m.entries for _, m in q)
    bits = sum(8 * m.nbytes for _, m in q) / entries if entries else float("nan")
    console.print(
        text(
            f"{path}: {len(q)} quantized tensors ({bits:.4f} bits/entry), "
            f"{len(rows) - len(q)} passed through; from {manifest.get('source')}"
            + ("; data verified (CRC32 + decode)" if verify else "")
        )
    )
    table = Table()
    for col in ("name", "kind", "spec", "shape", "dtype", "bits/entry", "file"):
        table.add_column(col, justify="right" if col == "bits/entry" else "left")
    for n, t, m in rows:
        table.add_row(
            text(n),
            t["kind"],
            text(t["spec"] or "-"),
            "×".join(map(str, t["shape"])),
            text(t["dtype"]),
            "-" if m is None else f"{m.bits_per_entry:.4f}",
            text(t["file"]),
        )
    console.print(table)
