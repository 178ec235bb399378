"""Quantize a whole checkpoint and write it out: ``.mmq`` per shard, the rest bit for bit.

:func:`quantize_checkpoint` writes into a new folder ``OUT``:

* ``STEM.mmq`` for each input file ``STEM.safetensors`` (each shard; ``STEM.npy`` / ``.npz``) that
  holds quantized tensors, under their tensor names (:func:`mmquant.io.save`);
* ``STEM.passthrough.safetensors`` with that file's other tensors, their bytes copied unchanged
  (same names, dtypes, shapes);
* ``mmquant-model.json``, the manifest: for every tensor its file, kind (``quantized`` /
  ``passthrough``), dtype, shape and spec;
* the configuration and tokenizer files of the input folder (``config.json``, ``tokenizer*`` ...);
* with ``dequantized=True``, also a plain safetensors checkpoint of the same names, shapes and
  dtypes (the quantized tensors decoded and cast back to their dtype): ``model.safetensors``, or
  the input's shard names plus ``model.safetensors.index.json``. ``OUT`` then loads wherever a
  Hugging Face checkpoint folder loads.

:func:`read_manifest` and :func:`dequantize_folder` read such a folder back (``mmquant inspect`` /
``mmquant dequantize`` accept it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.checkpoints.audit import as_matrix_of, open_cached
from mmquant.checkpoints.reader import INDEX_NAME, SINGLE_NAME, open_checkpoint, read_covariance
from mmquant.checkpoints.runner import Runner, run_tasks
from mmquant.checkpoints.safetensors_file import dtype_of, write_safetensors
from mmquant.core import Encoded, get
from mmquant.io import FormatError

__all__ = [
    "MANIFEST_NAME",
    "ExportResult",
    "encode_tensor",
    "quantize_checkpoint",
    "read_manifest",
    "dequantize_folder",
]

MANIFEST_NAME = "mmquant-model.json"
MANIFEST_FORMAT = "mmquant-model"
_VERSION = 1
_MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class ExportResult:
    """What :func:`quantize_checkpoint` wrote.

    Attributes
    ----------
    out : Path
    files : dict of str to int
        File name → bytes, for every file written or copied.
    quantized : dict of str to float
        Quantized tensor → measured bits per entry.
    passthrough : tuple of str
    bits_per_param : float
        Stored bits per parameter over the quantized tensors.
    """

    out: Path
    files: dict[str, int]
    quantized: dict[str, float]
    passthrough: tuple[str, ...]
    bits_per_param: float


def encode_tensor(path: str, tensor: str, spec: str, calib: str | None = None) -> Encoded:
    """Quantize one tensor of the checkpoint at ``path`` (a task: the worker reads it itself).

    The tensor is quantized along its last axis in its own shape; a weight-only family gets the
    tensor's Σ_X from the calibration file ``calib`` when one is given.
    """
    from mmquant.weightonly.quantizers import WeightOnlyQuantizer

    arr = open_cached(path).read(tensor)
    w = as_matrix_of(arr).reshape(arr.shape)
    q = get(spec)
    kw = {}
    if calib is not None and isinstance(q, WeightOnlyQuantizer):
        kw["sigma"] = read_covariance(calib, tensor, arr.shape[-1])
    return q.encode(w, **kw)


def _stem(file: str) -> str:
    return file.rsplit(".", 1)[0] if "." in file else file


def _check_out(out: Path, sources: list[Path]) -> None:
    for s in sources:
        if out.resolve() == s.resolve():
            raise ValueError(f"output {out} is the input: choose another folder")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"output {out} exists and is not a folder")
        if any(out.iterdir()):
            raise ValueError(f"output folder {out} is not empty: choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)


def _decoded(enc: Encoded, tag: str) -> np.ndarray:
    arr = get(enc.spec).decode(enc)
    return np.asarray(arr).astype(dtype_of(tag))


def quantize_checkpoint(
    path: str | Path,
    out: str | Path,
    specs: Mapping[str, str],
    *,
    calib: str | Path | None = None,
    dequantized: bool = False,
    runner: Runner | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> ExportResult:
    """Quantize the tensors named in ``specs`` and write the checkpoint to the folder ``out``.

    Parameters
    ----------
    path : str or Path
        Input checkpoint.
    out : str or Path
        New (or empty) output folder.
    specs : mapping of str to str
        Tensor name → quantizer spec (one spec for all selected tensors, or a plan's).
    calib : str or Path, optional
        Calibration file: Σ_X for the weight-only families (GPTQ, WaterSIC).
    dequantized : bool
        Also write the decoded checkpoint (same names, shapes, dtypes) as safetensors.
    runner : Runner, optional
        Serial or Dask.
    progress : callable, optional
        ``progress(i, tensor)`` after each quantized tensor.

    Raises
    ------
    KeyError
        A tensor of ``specs`` that the checkpoint does not hold.
    ValueError
        An unknown spec, a tensor name that cannot be stored (``/``), a non-float tensor, an
        output folder that is not empty or is the input.
    """
    from mmquant import io

    ck = open_checkpoint(path)
    specs = {name: get(s).spec for name, s in specs.items()}
    for name in specs:
        info = ck.info(name)
        if "/" in name or not name or name != name.strip():
            raise ValueError(f"tensor name {name!r} cannot be stored in an .mmq file")
        if not info.is_float or info.size == 0:
            raise ValueError(f"tensor {name!r} ({info.dtype}) is not a non-empty float tensor")
    out = Path(out)
    _check_out(out, [ck.root, ck.path])
    names = [n for n in ck.tensors if n in specs]
    tasks = [(str(ck.path), n, specs[n], None if calib is None else str(calib)) for n in names]
    done = None if progress is None else (lambda i, _r: progress(i, names[i]))
    encoded = dict(zip(names, run_tasks(encode_tensor, tasks, runner, done)))
    files: dict[str, int] = {}
    manifest: dict[str, Any] = {}
    shards = []
    for file in ck.files:
        stem = _stem(file)
        members = ck.shard_tensors(file)
        q = {n: encoded[n] for n in members if n in encoded}
        rest = [n for n in members if n not in encoded]
        mmq = f"{stem}.mmq" if q else None
        raw = f"{stem}.passthrough.safetensors" if rest else None
        if mmq:
            files[mmq] = io.save(out / mmq, q)
        if raw:
            files[raw] = write_safetensors(
                out / raw,
                [
                    (n, ck.tensors[n].dtype, ck.tensors[n].shape, lambda n=n: ck.raw(n))
                    for n in rest
                ],
            )
        for n in members:
            t = ck.tensors[n]
            manifest[n] = {
                "file": mmq if n in q else raw,
                "kind": "quantized" if n in q else "passthrough",
                "dtype": t.dtype,
                "shape": list(t.shape),
                "spec": q[n].spec if n in q else None,
                "source": file,
            }
        shards.append(file)
    for f in ck.extra_files():
        shutil.copyfile(f, out / f.name)
        files[f.name] = f.stat().st_size
    record = {
        "format": MANIFEST_FORMAT,
        "version": _VERSION,
        "source": str(ck.path),
        "source_files": shards,
        "sharded": ck.kind == "sharded",
        "tensors": manifest,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(record, indent=1) + "\n")
    files[MANIFEST_NAME] = (out / MANIFEST_NAME).stat().st_size
    if dequantized:
        files.update(_write_dequantized(out, out, read_manifest(out), encoded))
    total = sum(e.entries for e in encoded.values())
    return ExportResult(
        out=out,
        files=files,
        quantized={n: e.bits_per_entry for n, e in encoded.items()},
        passthrough=tuple(n for n in ck.tensors if n not in encoded),
        bits_per_param=sum(8 * e.nbytes for e in encoded.values()) / total if total else math.nan,
    )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of an exported folder (:func:`quantize_checkpoint`).

    Raises
    ------
    FileNotFoundError
        No manifest in ``folder``.
    FormatError
        A manifest that is not of this format, or names files outside the folder or missing.
    """
    folder = Path(folder)
    p = folder / MANIFEST_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{folder} is not an exported model folder (no {MANIFEST_NAME})")
    if p.stat().st_size > _MAX_MANIFEST_BYTES:
        raise FormatError(f"{p}: larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{p}: not JSON ({exc})") from None
    if not isinstance(rec, dict) or rec.get("format") != MANIFEST_FORMAT:
        raise FormatError(f"{p}: not an mmquant model manifest")
    if rec.get("version") != _VERSION:
        raise FormatError(f"{p}: manifest version {rec.get('version')!r} unknown")
    tensors = rec.get("tensors")
    srcs = rec.get("source_files")
    if not isinstance(tensors, dict) or not isinstance(srcs, list):
        raise FormatError(f"{p}: needs 'tensors' and 'source_files'")
    for name, t in tensors.items():
        ok = (
            isinstance(t, dict)
            and t.get("kind") in ("quantized", "passthrough")
            and isinstance(t.get("file"), str)
            and isinstance(t.get("dtype"), str)
            and isinstance(t.get("shape"), list)
            and all(type(d) is int and d >= 0 for d in t["shape"])
            and t.get("source") in srcs
        )
        if not ok:
            raise FormatError(f"{p}: entry of tensor {name!r} is malformed")
        f = t["file"]
        if "/" in f or os.sep in f or f.startswith(".") or not (folder / f).is_file():
            raise FormatError(f"{p}: tensor {name!r} names file {f!r}, not in {folder}")
        try:
            dtype_of(t["dtype"])
        except KeyError:
            raise FormatError(f"{p}: tensor {name!r} has unknown dtype {t['dtype']!r}") from None
    return rec


def _write_dequantized(
    folder: Path, dst: Path, manifest: dict[str, Any], encoded: Mapping[str, Encoded] | None
) -> dict[str, int]:
    """Write the decoded checkpoint of an exported ``folder`` into ``dst``; returns file sizes."""
    from mmquant import io

    tensors = manifest["tensors"]
    srcs = manifest["source_files"]
    sharded = bool(manifest.get("sharded"))
    files: dict[str, int] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for src in srcs:
        members = [n for n, t in tensors.items() if t["source"] == src]
        target = src if sharded else SINGLE_NAME
        if not target.endswith(".safetensors"):
            target = _stem(target) + ".safetensors"
        mmqs = {tensors[n]["file"] for n in members if tensors[n]["kind"] == "quantized"}
        records: dict[str, Encoded] = {}
        if encoded is not None:
            records = {n: encoded[n] for n in members if n in encoded}
        else:
            for f in sorted(mmqs):
                records.update(io.load(folder / f, verify=False))
        passthrough: dict[str, Any] = {}
        for f in sorted({tensors[n]["file"] for n in members} - mmqs):
            passthrough[f] = open_checkpoint(folder / f)

        def produce(n: str, records=records, passthrough=passthrough) -> np.ndarray:
            t = tensors[n]
            if t["kind"] == "quantized":
                if n not in records:
                    raise FormatError(f"{folder}: tensor {n!r} is not in {t['file']}")
                arr = _decoded(records[n], t["dtype"])
            else:
                arr = passthrough[t["file"]].read(n)
            if tuple(arr.shape) != tuple(t["shape"]):
                raise FormatError(f"{folder}: tensor {n!r} has shape {arr.shape}, not {t['shape']}")
            return arr

        items = [
            (n, tensors[n]["dtype"], tuple(tensors[n]["shape"]), lambda n=n: produce(n))
            for n in members
        ]
        files[target] = write_safetensors(dst / target, items, metadata={"format": "pt"})
        for n in members:
            weight_map[n] = target
            total += math.prod(tensors[n]["shape"]) * dtype_of(tensors[n]["dtype"]).itemsize
    if sharded:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        files[INDEX_NAME] = (dst / INDEX_NAME).stat().st_size
    return files


def dequantize_folder(folder: str | Path, dst: str | Path) -> dict[str, int]:
    """Decode an exported folder into a plain safetensors checkpoint in the new folder ``dst``.

    Writes the same files as ``quantize_checkpoint(..., dequantized=True)`` would (plus copies of
    the configuration and tokenizer files); returns file name → bytes.
    """
    folder, dst = Path(folder), Path(dst)
    manifest = read_manifest(folder)
    _check_out(dst, [folder])
    files = _write_dequantized(folder, dst, manifest, None)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix not in (".mmq", ".safetensors") and f.name != MANIFEST_NAME:
            if f.name == INDEX_NAME:
                continue
            shutil.copyfile(f, dst / f.name)
            files[f.name] = f.stat().st_size
    return files
