"""Storage of :class:`~mmquant.core.Encoded` records: the ``.mmq`` file format.

An ``.mmq`` file is a `safetensors <https://github.com/huggingface/safetensors>`_ file. It holds
one or more *named* matrices; for each matrix ``NAME`` the tensors are

* ``NAME/codes``       -- the packed codes or entropy-coded bitstream (``uint8``, 1-D),
* ``NAME/side/KEY``    -- each side-information array, in its stored dtype and shape.

Dtypes that safetensors' numpy API does not know (bfloat16, float8 ... from ``ml_dtypes``, big-endian
arrays are converted to little-endian first) are written as their raw bytes in a 1-D ``uint8``
tensor, with the dtype name and shape kept in the header; their byte count is unchanged. The string
metadata of the safetensors header holds a single key, ``"mmquant"``, whose value is a JSON header::

    {"magic": "mmquant", "format_version": 4, "library_version": "0.1.0",
     "matrices": {NAME: {"spec": ..., "shape": [...], "seed": ..., "stats": {...},
                         "arrays": {TENSOR: {"dtype": ..., "shape": [...], "raw": bool,
                                             "crc32": int}}}},
     "header_crc32": int}

``crc32`` is :func:`zlib.crc32` of the stored bytes of each array, ``header_crc32`` that of the
canonical JSON of the header without that field. Tensors are stored back to back without padding
(the safetensors header is padded to a multiple of 8 bytes), so

    file size = 8 + header length + Σ encoded.nbytes       (exactly; see :func:`read_info`),

i.e. the payload of a matrix is exactly the ``nbytes`` its ``bits_per_entry`` counts. Writing is
deterministic: the same records give byte-identical files.

API::

    mq.save("w.mmq", q.encode(W))                      # one matrix, stored under the name "x"
    mq.save("ab.mmq", {"A": enc_a, "B": enc_b})        # several named matrices
    enc = mq.load_one("w.mmq")                         # the only matrix of a file
    enc_b = mq.load_one("ab.mmq", "B")                 # or one by name
    recs = mq.load("ab.mmq")                           # dict name -> Encoded, in saved order
    info = mq.io.read_info("ab.mmq")                   # header only: specs, shapes, bits/entry
    W_hat = mq.get(enc.spec).decode(enc)               # bit-identical to decoding the original

Reading treats every file as hostile and raises :class:`FormatError` (a ``ValueError``) naming the
problem -- not a safetensors file or truncated, a header over :data:`HEADER_MAX_BYTES` or nested
deeper than :data:`JSON_MAX_DEPTH`, wrong magic, unknown format version, header JSON damaged or of
the wrong structure (every field's type is checked; dtypes are limited to numeric ones), a CRC
mismatch, a missing or unexpected array, an unknown spec -- and, before any decoder runs, checks
every record against its quantizer (:meth:`mmquant.core.Quantizer.check`: a valid shape, at least
one stored byte per 1024 entries, the exact code length, side arrays and seed its spec declares).
With ``verify=True`` (the default) it also decodes each matrix once to check that the decoder
accepts the stored values and returns a finite array of the header's shape. A damaged file never
loads silently, and a crafted one never makes a decoder read outside its buffers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.core import VERSION, Encoded
from mmquant.layout import LEGACY_SIDE_VERSION, rename_legacy_side

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DEFAULT_NAME",
    "HEADER_MAX_BYTES",
    "JSON_MAX_DEPTH",
    "FormatError",
    "FileInfo",
    "MatrixInfo",
    "save",
    "load",
    "load_one",
    "read_info",
]

FORMAT_NAME = "mmquant"  # the "magic" of the JSON header
FORMAT_VERSION = 4
#: Older versions this library still reads. Version 2 (before the structured rotation of every row
#: length) is read except for records whose codes were made with the dense random orthogonal
#: rotation of version 2 (rotated codes with a last dimension that has no Hadamard matrix).
#: Versions ≤ 3 named several side arrays ``scale``; they are renamed on reading
#: (:data:`mmquant.layout.LEGACY_SIDE_KEYS`), the bytes are the same.
READABLE_VERSIONS = (2, 3, 4)
DEFAULT_NAME = "x"  # name of the matrix when save() is given a single Encoded
_META_KEY = "mmquant"
#: Largest safetensors header read (the limit safetensors itself applies: 100 MB).
HEADER_MAX_BYTES = 100_000_000
#: Deepest nesting of lists and objects accepted in a header (a valid one nests 6 deep).
JSON_MAX_DEPTH = 32

# numpy dtypes that safetensors' numpy API writes natively (safetensors.numpy._TYPES, minus complex)
_NATIVE = {
    np.dtype(t)
    for t in (
        np.float64,
        np.float32,
        np.float16,
        np.int64,
        np.uint64,
        np.int32,
        np.uint32,
        np.int16,
        np.uint16,
        np.int8,
        np.uint8,
        np.bool_,
    )
}


class FormatError(ValueError):
    """A file is not a valid ``.mmq`` file (damaged, truncated, wrong version ...).

    The message names the file and the problem. Subclass of ``ValueError``.
    """


@dataclass(frozen=True)
class MatrixInfo:
    """Header entry of one stored matrix (no array data)."""

    name: str
    spec: str
    shape: tuple[int, ...]
    seed: int | None
    stats: dict[str, Any]
    nbytes: int  # bytes of codes + side information (the payload counted in the rate)

    @property
    def entries(self) -> int:
        """Number of entries of the matrix."""
        return math.prod(self.shape)

    @property
    def bits_per_entry(self) -> float:
        """Stored rate in bits per entry: 8 · nbytes / entries."""
        return 8.0 * self.nbytes / max(self.entries, 1)


@dataclass(frozen=True)
class FileInfo:
    """What :func:`read_info` learns from a file's header (arrays are not read)."""

    path: str
    format_version: int
    library_version: str
    matrices: dict[str, MatrixInfo]
    file_bytes: int
    header_bytes: int  # 8-byte length prefix + safetensors JSON header (padding included)

    @property
    def data_bytes(self) -> int:
        """Bytes after the header: the sum of every matrix's payload."""
        return self.file_bytes - self.header_bytes


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _dtype_name(dt: np.dtype) -> str:
    return dt.newbyteorder("=").name if dt.byteorder == ">" else dt.name


def _resolve_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise


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


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise ValueError(f"{what} must be a non-empty string without '/', got {name!r}")
    return name


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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _json_depth_ok(obj: Any) -> bool:
    """Whether lists/objects nest at most :data:`JSON_MAX_DEPTH` deep (iterative walk)."""
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if d > JSON_MAX_DEPTH:
            return False
        stack.extend((c, d + 1) for c in children)
    return True


def _parse_json(text: str | bytes, path: Path, what: str) -> Any:
    """``json.loads`` that raises FormatError for any bad input (also deep nesting)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise FormatError(
            f"{path}: {what} is nested too deeply (more than {JSON_MAX_DEPTH} levels)"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, oversized integers
        raise FormatError(f"{path}: {what} is damaged ({exc})") from None
    if not _json_depth_ok(obj):
        raise FormatError(
            f"{path}: {what} is nested too deeply (more than {JSON_MAX_DEPTH} levels)"
        )
    return obj


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """Parse and check the JSON header; returns (header, header_bytes, file_bytes)."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{path}: not an mmquant file (only {size} bytes)")
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise FormatError(
                f"{path}: not an mmquant file or truncated "
                f"(header length {n} exceeds the file size {size})"
            )
        if n > HEADER_MAX_BYTES:
            raise FormatError(
                f"{path}: header of {n} bytes exceeds the limit of {HEADER_MAX_BYTES} bytes"
            )
        raw = fh.read(n)
    not_ours = f"{path}: not an mmquant file (no valid safetensors header with 'mmquant' metadata)"
    try:
        st_header = _parse_json(raw.decode("utf-8"), path, "safetensors header")
        meta = st_header["__metadata__"][_META_KEY]
    except (UnicodeDecodeError, KeyError, TypeError):
        raise FormatError(not_ours) from None
    except FormatError as exc:
        if "nested too deeply" in str(exc):
            raise
        raise FormatError(not_ours) from None
    if not isinstance(meta, str):
        raise FormatError(not_ours)
    header = _parse_json(meta, path, "header JSON")
    if not isinstance(header, dict) or header.get("magic") != FORMAT_NAME:
        got = header.get("magic") if isinstance(header, dict) else type(header).__name__
        raise FormatError(f"{path}: wrong magic {got!r}, expected {FORMAT_NAME!r}")
    version = header.get("format_version")
    if version == 1:
        raise FormatError(
            f"{path}: format version 1 (before the lattice codes e8/d4/zn changed their packing "
            f"and started to store their β list); this library reads version {FORMAT_VERSION}: "
            "re-encode the matrices"
        )
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"{path}: unknown format version {version!r} (this library reads version "
            f"{FORMAT_VERSION}); upgrade mmquant"
        )
    body = {k: v for k, v in header.items() if k != "header_crc32"}
    if header.get("header_crc32") != zlib.crc32(_canonical(body).encode()):
        raise FormatError(f"{path}: header CRC32 mismatch (the header is damaged)")
    return header, 8 + n, size


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _stored_dtype(name: Any) -> np.dtype:
    """The dtype a header names, if it is one this format stores (numeric, canonical name)."""
    if not isinstance(name, str):
        raise ValueError(f"dtype must be a string, got {name!r}")
    import ml_dtypes

    extra = getattr(ml_dtypes, name, None) if not name.startswith("_") else None
    try:
        dt = np.dtype(extra if isinstance(extra, type) else name)
    except TypeError:
        raise ValueError(f"unknown dtype {name!r}") from None
    numeric = dt.kind in "biuf" or (
        isinstance(extra, type) and dt.kind == "V" and dt.fields is None and dt.itemsize <= 8
    )
    if not numeric or dt.name != name:
        raise ValueError(f"dtype {name!r} is not a numeric dtype this format stores")
    return dt


def _array_entry(tname: str, e: Any) -> dict[str, Any]:
    """A header's array entry, checked field by field (ValueError naming the field)."""
    if not isinstance(e, dict):
        raise ValueError(f"entry of array {tname!r} is not an object")
    missing = {"dtype", "shape", "raw", "crc32"} - set(e)
    if missing:
        raise ValueError(f"entry of array {tname!r} lacks {', '.join(sorted(missing))}")
    dtype = _stored_dtype(e["dtype"])
    shape = e["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > 32
        or not all(_is_int(v) and v >= 0 for v in shape)
    ):
        raise ValueError(f"array {tname!r} has an invalid shape {shape!r}")
    if not isinstance(e["raw"], bool):
        raise ValueError(f"array {tname!r}: 'raw' must be true or false")
    if not _is_int(e["crc32"]) or not 0 <= e["crc32"] < 2**32:
        raise ValueError(f"array {tname!r}: 'crc32' must be a 32-bit unsigned integer")
    return {"dtype": dtype, "shape": tuple(shape), "raw": e["raw"], "crc32": e["crc32"]}


def _matrix_info(path: Path, name: str, m: Any) -> MatrixInfo:
    from mmquant.layout import check_shape

    try:
        _check_name(name, "matrix name")
        if not isinstance(m, dict):
            raise ValueError("not an object")
        missing = {"spec", "shape", "seed", "stats", "arrays"} - set(m)
        if missing:
            raise ValueError(f"lacks {', '.join(sorted(missing))}")
        if not isinstance(m["spec"], str):
            raise ValueError(f"spec must be a string, got {type(m['spec']).__name__}")
        if not isinstance(m["shape"], list) or not all(_is_int(v) for v in m["shape"]):
            raise ValueError(f"shape must be a list of integers, got {m['shape']!r}")
        shape = tuple(m["shape"])
        check_shape(shape, "matrix")
        seed = m["seed"]
        if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
            raise ValueError(f"seed must be null or an unsigned 64-bit integer, got {seed!r}")
        stats = m["stats"]
        if not isinstance(stats, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in stats.values()
        ):
            raise ValueError("stats must be an object of numbers")
        if not isinstance(m["arrays"], dict):
            raise ValueError("arrays must be an object")
        entries = {str(t): _array_entry(str(t), e) for t, e in m["arrays"].items()}
        nbytes = sum(math.prod(e["shape"]) * e["dtype"].itemsize for e in entries.values())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{path}: header entry of matrix {name!r} is malformed ({exc})") from None
    return MatrixInfo(
        name=name, spec=m["spec"], shape=shape, seed=seed, stats=dict(stats), nbytes=int(nbytes)
    )


def read_info(path: str | os.PathLike[str]) -> FileInfo:
    """Read and check the header of an ``.mmq`` file without reading the arrays.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FormatError
        Not an mmquant file, unknown format version, damaged header.
    """
    path = Path(path)
    header, header_bytes, size = _read_header(path)
    matrices = header.get("matrices")
    if not isinstance(matrices, dict) or not matrices:
        raise FormatError(f"{path}: the header lists no matrices")
    infos = {str(k): _matrix_info(path, str(k), v) for k, v in matrices.items()}
    return FileInfo(
        path=str(path),
        format_version=int(header["format_version"]),
        library_version=str(header.get("library_version", "?")),
        matrices=infos,
        file_bytes=size,
        header_bytes=header_bytes,
    )


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
