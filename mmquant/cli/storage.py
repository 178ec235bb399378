"""``mmquant quantize`` / ``dequantize`` / ``inspect``: arrays to ``.mmq`` files and back.

Inputs of ``quantize``: ``.npy`` (one array, stored under the name ``x``), ``.npz`` and
``.safetensors`` (every array, or those named with ``--key``, stored under their own names; float
dtypes F64/F32/F16/BF16/F8 and integer dtypes are read). The whole array is quantized at once (no
chunking: per-tensor scales would change); the progress bar advances per array.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmquant.cli import app
from mmquant.io import DEFAULT_NAME, read_info

__all__ = ["dequantize_cmd", "inspect_cmd", "quantize_cmd", "read_arrays"]

# safetensors dtype tag -> numpy dtype (BF16 and F8 through ml_dtypes)
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file with numpy (BF16/F8 via ml_dtypes)."""
    import ml_dtypes

    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    out: dict[str, np.ndarray] = {}
    base = 8 + n
    for name, entry in header.items():
        tag = entry.get("dtype")
        if tag not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {tag}")
        dname = _ST_DTYPES[tag]
        dtype = (
            np.dtype(getattr(ml_dtypes, dname)) if hasattr(ml_dtypes, dname) else np.dtype(dname)
        )
        start, end = entry["data_offsets"]
        buf = data[base + start : base + end]
        shape = tuple(entry["shape"])
        if len(buf) != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} is truncated")
        out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return out


def read_arrays(path: Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of an ``.npy`` / ``.npz`` / ``.safetensors`` file, by name (``--key`` selects)."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if keys:
            raise ValueError("--key applies to .npz and .safetensors inputs, not .npy")
        return {DEFAULT_NAME: np.load(path, allow_pickle=False)}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    elif suffix == ".safetensors":
        arrays = _read_safetensors(path)
    else:
        raise ValueError(f"unsupported input {path.name!r}: expected .npy, .npz or .safetensors")
    if keys:
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ValueError(
                f"{path}: no array named {', '.join(map(repr, missing))}; "
                f"available: {', '.join(arrays)}"
            )
        arrays = {k: arrays[k] for k in keys}
    if not arrays:
        raise ValueError(f"{path} holds no arrays")
    return arrays


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@app.command("quantize")
def quantize_cmd(
    src: Path = typer.Argument(..., help="Input .npy, .npz or .safetensors file."),
    dst: Path = typer.Argument(..., help="Output .mmq file."),
    spec: str = typer.Option(..., "--spec", help='Quantizer spec, e.g. "int:bits=4,group=32".'),
    key: list[str] = typer.Option(
        None, "--key", help="Array(s) to quantize from an .npz/.safetensors input (repeatable)."
    ),
) -> None:
    """Quantize the arrays of SRC along their last axis and write them to the .mmq file DST."""
    import mmquant
    from mmquant.metrics import sqnr_db

    q = mmquant.get(spec)
    arrays = read_arrays(src, key or None)
    for name in arrays:
        if "/" in name or not name.strip():
            raise ValueError(f"array name {name!r} cannot be stored (empty or contains '/')")
    console = Console()
    encoded = {}
    table = Table(title=f"{src.name} → {dst.name} ({q.spec})")
    for col in ("name", "shape", "bits/entry", "SQNR dB"):
        table.add_column(col, justify="left" if col == "name" else "right")
    with _progress(Console(stderr=True)) as progress:
        task = progress.add_task("quantizing", total=len(arrays))
        for name, arr in arrays.items():
            progress.update(task, description=f"quantizing {name}")
            enc = q.encode(arr)
            encoded[name] = enc
            ref = np.asarray(arr, dtype=np.float64)
            table.add_row(
                name,
                "×".join(map(str, enc.shape)),
                f"{enc.bits_per_entry:.4f}",
                f"{sqnr_db(ref, q.decode(enc)):.2f}",
            )
            progress.advance(task)
    size = mmquant.save(dst, encoded)
    console.print(table)
    console.print(f"wrote {dst} ({size} bytes)")


@app.command("dequantize")
def dequantize_cmd(
    src: Path = typer.Argument(..., help="Input .mmq file."),
    dst: Path = typer.Argument(..., help="Output .npy (one matrix) or .npz (all matrices)."),
    name: str = typer.Option(None, "--name", help="Matrix to write (default: all / the only one)."),
) -> None:
    """Decode the matrices of the .mmq file SRC and write them to DST (.npy or .npz)."""
    import mmquant

    info = read_info(src)
    names = [name] if name else list(info.matrices)
    if name and name not in info.matrices:
        raise ValueError(f"{src} has no matrix {name!r}; it holds {', '.join(info.matrices)}")
    suffix = dst.suffix.lower()
    if suffix == ".npy" and len(names) != 1:
        raise ValueError(
            f"{src} holds {len(names)} matrices ({', '.join(names)}): write a .npz or pass --name"
        )
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"unsupported output {dst.name!r}: expected .npy or .npz")
    out = {}
    with _progress(Console(stderr=True)) as progress:
        task = progress.add_task("decoding", total=len(names))
        records = mmquant.load(src, names=names, verify=False)
        for n, enc in records.items():
            progress.update(task, description=f"decoding {n}")
            arr = mmquant.get(enc.spec).decode(enc)
            if arr.shape != enc.shape or not np.isfinite(arr).all():
                raise mmquant.FormatError(f"{src}: matrix {n!r} does not decode consistently")
            out[n] = arr
            progress.advance(task)
    if suffix == ".npy":
        np.save(dst, out[names[0]])
    else:
        np.savez(dst, **out)
    Console().print(f"wrote {dst} ({', '.join(names)})")


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="An .mmq file."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON instead."),
    verify: bool = typer.Option(
        False, "--verify", help="Also read every array (CRC32 checks) and decode each matrix."
    ),
) -> None:
    """Show what an .mmq file holds (checks the header; --verify checks the data too)."""
    import mmquant

    info = read_info(path)
    if verify:
        mmquant.load(path, verify=True)  # raises FormatError naming the problem
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
        typer.echo(json.dumps(rec, indent=2))
        return
    console = Console(width=max(120, Console().width))
    console.print(
        f"{path.name}: mmq format v{info.format_version}, written by mmquant "
        f"{info.library_version}; {info.file_bytes} bytes ({info.header_bytes} header)"
        + ("; data verified (CRC32 + decode)" if verify else "")
    )
    table = Table()
    for col in ("name", "spec", "shape", "bits/entry", "bytes", "seed"):
        table.add_column(col, justify="left" if col in ("name", "spec") else "right")
    for n, m in info.matrices.items():
        table.add_row(
            n,
            m.spec,
            "×".join(map(str, m.shape)),
            f"{m.bits_per_entry:.4f}",
            str(m.nbytes),
            "-" if m.seed is None else str(m.seed),
        )
    console.print(table)
