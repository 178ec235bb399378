"""Writing ``.mmq`` files: records to safetensors tensors and a checked JSON header (atomic)."""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.core import VERSION, Encoded
from mmquant.io.header import (
    _META_KEY,
    _NATIVE,
    DEFAULT_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    _canonical,
    _check_name,
    _dtype_name,
    _resolve_dtype,
)

__all__ = ["save"]


def _to_stored(arr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Array as written (native dtype or raw uint8 bytes) and its header entry."""
    arr = np.asarray(arr)
    try:
        ok = arr.dtype.kind != "O" and _resolve_dtype(
            _dtype_name(arr.dtype)
        ) == arr.dtype.newbyteorder("=")
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"cannot store an array of dtype {arr.dtype}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    raw = arr.dtype not in _NATIVE
    stored = arr.reshape(-1).view(np.uint8) if raw else arr
    entry = {
        "dtype": _dtype_name(arr.dtype),
        "shape": list(arr.shape),
        "raw": raw,
        "crc32": zlib.crc32(stored.tobytes()),
    }
    return stored, entry


def save(path: str | os.PathLike[str], data: Encoded | Mapping[str, Encoded]) -> int:
    """Write one or several encoded matrices to an ``.mmq`` file.

    Parameters
    ----------
    path : str or path-like
        Destination (written atomically: a temporary file in the same folder is renamed).
    data : Encoded or mapping of str to Encoded
        A single record (stored under the name :data:`DEFAULT_NAME`, ``"x"``) or named records
        (``{"A": enc_a, "B": enc_b}``; names are non-empty and contain no ``/``).

    Returns
    -------
    int
        Size of the written file in bytes: 8 + header length + Σ ``enc.nbytes`` exactly.

    Raises
    ------
    TypeError
        ``data`` is not an ``Encoded`` or a mapping of them.
    ValueError
        Empty mapping or an invalid name.
    """
    from safetensors.numpy import save as st_save

    if isinstance(data, Encoded):
        data = {DEFAULT_NAME: data}
    if not isinstance(data, Mapping):
        raise TypeError(
            f"save expects an Encoded or a mapping name -> Encoded, got {type(data).__name__}"
        )
    if not data:
        raise ValueError("save needs at least one encoded matrix")
    tensors: dict[str, np.ndarray] = {}
    matrices: dict[str, Any] = {}
    for name, enc in data.items():
        _check_name(name, "matrix name")
        if not isinstance(enc, Encoded):
            raise TypeError(f"matrix {name!r} is a {type(enc).__name__}, expected an Encoded")
        arrays: dict[str, Any] = {}
        for key, arr in [("codes", enc.codes)] + [
            (f"side/{_check_name(k, 'side-information key')}", v) for k, v in enc.side.items()
        ]:
            tname = f"{name}/{key}"
            tensors[tname], arrays[tname] = _to_stored(arr)
        matrices[name] = {
            "spec": enc.spec,
            "shape": list(enc.shape),
            "seed": None if enc.seed is None else int(enc.seed),
            "stats": json.loads(_canonical(dict(enc.stats))),
            "arrays": arrays,
        }
    header: dict[str, Any] = {
        "magic": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": VERSION,
        "matrices": matrices,
    }
    header["header_crc32"] = zlib.crc32(_canonical(header).encode())
    blob = st_save(tensors, metadata={_META_KEY: _canonical(header)})
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(blob)
