"""Reading ``.mmq`` files: arrays checked against the header, records against their quantizers."""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.core import Encoded
from mmquant.io.header import (
    FORMAT_VERSION,
    FormatError,
    _array_entry,
    _read_header,
    read_info,
)
from mmquant.layout import LEGACY_SIDE_VERSION, rename_legacy_side

__all__ = ["load", "load_one"]


def _from_stored(path: Path, tname: str, arr: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    try:
        entry = _array_entry(tname, entry)
    except ValueError as exc:
        raise FormatError(f"{path}: {exc}") from None
    if zlib.crc32(np.ascontiguousarray(arr).tobytes()) != entry["crc32"]:
        raise FormatError(f"{path}: CRC32 mismatch in array {tname!r} (the data is damaged)")
    dtype = entry["dtype"]
    shape = entry["shape"]
    if entry["raw"]:
        if arr.dtype != np.uint8 or arr.nbytes != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"{path}: array {tname!r} has the wrong size for {dtype}{shape}")
        return arr.view(dtype).reshape(shape).copy()
    if arr.dtype != dtype or arr.shape != shape:
        raise FormatError(
            f"{path}: array {tname!r} is {arr.dtype}{arr.shape}, header says {dtype}{shape}"
        )
    return np.array(arr, copy=True)


def _check_spec(path: Path, name: str, spec: str) -> Any:
    from mmquant.core import get

    try:
        return get(spec)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{path}: matrix {name!r} has an unknown spec {spec!r} ({exc})") from None


def _check_record(path: Path, name: str, enc: Encoded) -> Any:
    """The record's quantizer, after :meth:`~mmquant.core.Quantizer.check` (FormatError)."""
    q = _check_spec(path, name, enc.spec)
    try:
        q.check(enc)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{path}: matrix {name!r} is malformed: {exc}") from None
    return q


def _verify(path: Path, name: str, enc: Encoded) -> None:
    q = _check_record(path, name, enc)
    try:
        out = q.decode(enc)
    except Exception as exc:  # any decoder failure means the record is inconsistent
        raise FormatError(
            f"{path}: matrix {name!r} does not decode with {enc.spec!r} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if tuple(np.shape(out)) != enc.shape:
        raise FormatError(
            f"{path}: matrix {name!r} decodes to shape {np.shape(out)}, header says {enc.shape}"
        )
    if not np.isfinite(out).all():
        raise FormatError(f"{path}: matrix {name!r} decodes to non-finite values")


def load(
    path: str | os.PathLike[str], *, names: list[str] | None = None, verify: bool = True
) -> dict[str, Encoded]:
    """Read the encoded matrices of an ``.mmq`` file.

    Parameters
    ----------
    path : str or path-like
        File written by :func:`save`.
    names : list of str, optional
        Read only these matrices (default: all).
    verify : bool
        Also decode each record once: the decoder accepts its stored values, and the
        reconstruction is finite with the header's shape (costs one decode per matrix). Always
        done: the header's size, nesting and structure, CRC32 checks of every array and of the
        header, that every spec names a registered quantizer, and that every record fits its
        quantizer's declared layout (:meth:`mmquant.core.Quantizer.check`: shape, size rule,
        exact code length, side arrays with their dtypes and shapes, seed).

    Returns
    -------
    dict of str to Encoded
        Name → record, in the order they were saved; a single :class:`Encoded` saved without a
        name is under ``"x"`` (or use :func:`load_one`). Decoding a loaded record gives the same
        array, bit for bit, as decoding the record that was saved.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FormatError
        The file is not a valid ``.mmq`` file (the message names the problem).
    KeyError
        A name in ``names`` is not in the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    info = read_info(path)
    header, _, _ = _read_header(path)
    if names is None:
        names = list(info.matrices)
    for n in names:
        if n not in info.matrices:
            raise KeyError(f"{path}: no matrix {n!r}; the file holds {', '.join(info.matrices)}")
    out: dict[str, Encoded] = {}
    try:
        with safe_open(str(path), framework="np") as fh:
            keys = set(fh.keys())
            listed = {t for m in header["matrices"].values() for t in m["arrays"]}
            if keys - listed:
                raise FormatError(
                    f"{path}: arrays not listed in the header: {', '.join(sorted(keys - listed))}"
                )
            for name in names:
                m = header["matrices"][name]
                arrays: dict[str, np.ndarray] = {}
                for tname, entry in m["arrays"].items():
                    if tname not in keys:
                        raise FormatError(f"{path}: array {tname!r} is missing")
                    arrays[tname] = _from_stored(path, tname, fh.get_tensor(tname), entry)
                codes = arrays.pop(f"{name}/codes", None)
                if codes is None:
                    raise FormatError(f"{path}: matrix {name!r} has no codes array")
                prefix = f"{name}/side/"
                if any(not t.startswith(prefix) for t in arrays):
                    raise FormatError(f"{path}: matrix {name!r} lists foreign arrays")
                mi = info.matrices[name]
                try:
                    enc = Encoded(
                        codes=codes,
                        side={t[len(prefix) :]: a for t, a in arrays.items()},
                        shape=mi.shape,
                        spec=mi.spec,
                        seed=mi.seed,
                        stats=mi.stats,
                    )
                except (TypeError, ValueError) as exc:
                    raise FormatError(f"{path}: matrix {name!r} is malformed ({exc})") from None
                out[name] = enc
    except SafetensorError as exc:
        raise FormatError(f"{path}: not a valid safetensors file or truncated ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{path}: header is malformed ({exc})") from None
    for name, enc in list(out.items()):
        if header["format_version"] <= LEGACY_SIDE_VERSION:
            out[name] = enc = _rename_legacy(path, name, enc)
        if header["format_version"] == 2:
            _check_version2_rotation(path, name, enc)
        if verify:
            _verify(path, name, enc)
        else:
            _check_record(path, name, enc)
    return out


def _rename_legacy(path: Path, name: str, enc: Encoded) -> Encoded:
    """A record of a version ≤ 3 file with its side arrays under today's keys."""
    q = _check_spec(path, name, enc.spec)
    try:
        lay = q.layout(enc.shape)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{path}: matrix {name!r} is malformed: {exc}") from None
    declared = set(lay.side) if lay is not None else set()
    side = rename_legacy_side(q.name, enc.side, declared)
    return dataclasses.replace(enc, side=side)


def _check_version2_rotation(path: Path, name: str, enc: Encoded) -> None:
    """Refuse a version-2 record whose codes used the dense rotation this library no longer has.

    Format version 2 rotated rows whose length ``n`` has no Hadamard matrix by a random orthogonal
    matrix (O(n²) memory); version 3 uses a structured block-Hadamard rotation instead, so such
    codes would decode to other numbers. Every other version-2 record decodes bit for bit as before.
    """
    from mmquant.rotations import rotation_scheme

    q = _check_spec(path, name, enc.spec)
    rotates = q.name == "timeshare" or bool(getattr(q, "rotate", False))
    if q.name not in ROTATED_FAMILIES or not rotates or not enc.shape:
        return
    n = enc.shape[-1]
    if n >= 1 and rotation_scheme(n) != "hadamard":
        raise FormatError(
            f"{path}: matrix {name!r} was written in format version 2 with a dense random "
            f"rotation of length {n}, which version {FORMAT_VERSION} replaced by a structured "
            "one: re-encode it from the original data"
        )


#: Families whose version-2 codes depend on the rotation of the rows.
ROTATED_FAMILIES = frozenset({"e8", "d4", "zn", "e8ec", "timeshare"})


def load_one(
    path: str | os.PathLike[str], name: str | None = None, *, verify: bool = True
) -> Encoded:
    """Read one encoded matrix of an ``.mmq`` file.

    Parameters
    ----------
    path : str or path-like
        File written by :func:`save`.
    name : str, optional
        Which matrix; may be omitted when the file holds exactly one.
    verify : bool
        See :func:`load`.

    Raises
    ------
    FormatError
        Invalid file (see :func:`load`).
    KeyError
        ``name`` is not in the file.
    ValueError
        ``name`` omitted but the file holds several matrices.
    """
    if name is None:
        info = read_info(path)
        if len(info.matrices) != 1:
            raise ValueError(
                f"{path} holds {len(info.matrices)} matrices ({', '.join(info.matrices)}); "
                "pass name="
            )
        name = next(iter(info.matrices))
    return load(path, names=[name], verify=verify)[name]
