"""The ``.mmq`` header: format constants, the file and matrix descriptions, and the checked reading
of a header (every size, type and CRC verified before any array is read).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "DEFAULT_NAME",
    "HEADER_MAX_BYTES",
    "JSON_MAX_DEPTH",
    "FormatError",
    "FileInfo",
    "MatrixInfo",
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


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise ValueError(f"{what} must be a non-empty string without '/', got {name!r}")
    return name


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
