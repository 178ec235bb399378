"""Safetensors files read as hostile input, tensor by tensor (memory-mapped), and written streaming.

A safetensors file is ``u64 N`` (little-endian) + ``N`` bytes of JSON header + the data section.
The header maps each tensor name to ``{"dtype": TAG, "shape": [...], "data_offsets": [start,
end]}`` (offsets relative to the data section) and may hold ``"__metadata__"`` (str → str).

:func:`read_header` checks everything before a byte of tensor data is touched: the header length
against the file size and :data:`HEADER_MAX_BYTES`, the JSON structure, every dtype tag, every
shape (non-negative integers, at most :data:`MAX_NDIM` axes), every ``data_offsets`` pair inside
the data section with the exact byte length of its shape and dtype, and no two tensors sharing
bytes. :func:`read_tensor` then maps only that tensor's bytes (:class:`numpy.memmap`, read-only),
so reading a model costs the memory of its largest tensor, not of the model. bfloat16 and the
float8 types are viewed through ``ml_dtypes`` (safetensors' own numpy reader cannot read them).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmquant.io import FormatError

__all__ = [
    "DTYPES",
    "HEADER_MAX_BYTES",
    "MAX_NDIM",
    "TensorEntry",
    "SafetensorsHeader",
    "read_header",
    "read_tensor",
    "read_raw",
    "dtype_of",
    "tag_of",
    "write_safetensors",
]

#: Largest JSON header accepted (bytes), as the reference implementation.
HEADER_MAX_BYTES = 100_000_000
#: Most axes a tensor may have.
MAX_NDIM = 16
#: safetensors dtype tag -> numpy dtype name (BF16 and F8 through ml_dtypes).
DTYPES = {
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
_TAGS = {v: k for k, v in DTYPES.items()}


def dtype_of(tag: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype tag (``"BF16"`` → ``ml_dtypes.bfloat16``)."""
    import ml_dtypes

    name = DTYPES[tag]
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def tag_of(dtype: np.dtype) -> str:
    """The safetensors tag of a numpy dtype (``ValueError`` for one safetensors cannot store)."""
    dt = np.dtype(dtype)
    tag = _TAGS.get(dt.name)
    if tag is None:
        raise ValueError(f"dtype {dt} cannot be stored in a safetensors file")
    return tag


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header.

    Attributes
    ----------
    name : str
    dtype : str
        Safetensors tag (``"F32"``, ``"BF16"`` ...).
    shape : tuple of int
    start, end : int
        Absolute byte offsets of the tensor's data in the file.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return self.end - self.start

    @property
    def size(self) -> int:
        """Number of entries."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """The checked header of a safetensors file: tensors in file order and the metadata."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    file_bytes: int


def _bad(path: Path, msg: str) -> FormatError:
    return FormatError(f"{path}: not a valid safetensors file ({msg})")


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and check the header of a safetensors file (no tensor data is read).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FormatError
        Truncated file, header too long or not JSON, unknown dtype, bad shape, offsets outside
        the data section, of the wrong length, or overlapping another tensor (the message names
        the tensor and the problem).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    if not p.is_file():
        raise FormatError(f"{p} is not a regular file")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(p, f"only {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > HEADER_MAX_BYTES:
            raise _bad(p, f"header length {n} exceeds {HEADER_MAX_BYTES} bytes")
        if n > size - 8:
            raise _bad(p, f"header length {n} exceeds the file size {size}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(p, f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad(p, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad(p, "__metadata__ must map strings to strings")
    base = 8 + n
    data = size - base
    out: dict[str, TensorEntry] = {}
    for name, e in header.items():
        if not isinstance(e, dict):
            raise _bad(p, f"entry of tensor {name!r} is not a JSON object")
        tag, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if not isinstance(tag, str) or tag not in DTYPES:
            raise _bad(p, f"tensor {name!r} has unsupported dtype {tag!r}")
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_NDIM
            and all(type(d) is int and d >= 0 for d in shape)
        ):
            raise _bad(p, f"tensor {name!r} has shape {shape!r}: need ≤ {MAX_NDIM} integers ≥ 0")
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        ):
            raise _bad(p, f"tensor {name!r} needs two integer data_offsets, got {offsets!r}")
        start, end = offsets
        if not 0 <= start <= end <= data:
            raise _bad(
                p, f"tensor {name!r} has data_offsets [{start}, {end}] outside {data} data bytes"
            )
        need = math.prod(shape) * dtype_of(tag).itemsize
        if end - start != need:
            raise _bad(
                p,
                f"tensor {name!r} of shape {tuple(shape)} and dtype {tag} needs {need} bytes, "
                f"its data_offsets give {end - start}",
            )
        out[name] = TensorEntry(name, tag, tuple(shape), base + start, base + end)
    spans = sorted((t.start, t.end, t.name) for t in out.values() if t.end > t.start)
    for (_, e0, n0), (s1, _, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise _bad(p, f"tensors {n0!r} and {n1!r} share bytes")
    return SafetensorsHeader(p, out, dict(meta), size)


def read_raw(entry: TensorEntry, path: str | os.PathLike[str]) -> np.ndarray:
    """The tensor's bytes as a read-only 1-D ``uint8`` memory map (an empty array if none)."""
    if entry.nbytes == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=entry.start, shape=(entry.nbytes,))


def read_tensor(entry: TensorEntry, path: str | os.PathLike[str]) -> np.ndarray:
    """The tensor as a read-only memory-mapped array of its dtype and shape (nothing is copied).

    ``path`` must be the file whose :func:`read_header` gave ``entry``; the file's size is checked
    again (a file truncated since its header was read raises :class:`FormatError`).
    """
    if os.path.getsize(path) < entry.end:
        raise FormatError(f"{path}: tensor {entry.name!r} lies past the end of the file")
    dt = dtype_of(entry.dtype).newbyteorder("<")
    if entry.nbytes == 0:
        return np.zeros(entry.shape, dt)
    return np.memmap(path, dtype=dt, mode="r", offset=entry.start, shape=entry.shape)


# A tensor to write: (name, tag, shape, producer of its bytes). The producer is called once, when
# the tensor's turn comes, so a file of any size is written holding one tensor at a time.
Producer = Callable[[], "np.ndarray | bytes | memoryview"]


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Iterable[tuple[str, str, tuple[int, ...], Producer]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a safetensors file one tensor at a time (atomically: temporary file + rename).

    Parameters
    ----------
    path : path-like
        Destination.
    tensors : iterable of (name, tag, shape, producer)
        In file order; ``producer()`` returns the tensor's bytes (any buffer or array; it must
        hold exactly ``prod(shape) × itemsize`` bytes, little-endian).
    metadata : mapping of str to str, optional
        ``__metadata__`` of the header.

    Returns
    -------
    int
        Bytes written.
    """
    items = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, tag, shape, _ in items:
        if name in header:
            raise ValueError(f"tensor {name!r} given twice")
        nbytes = math.prod(shape) * dtype_of(tag).itemsize
        header[name] = {
            "dtype": tag,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data section aligned to 8 bytes, as the reference writer
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
            for name, tag, shape, produce in items:
                data = produce()
                if isinstance(data, np.ndarray):
                    arr = np.ascontiguousarray(data)
                    if arr.dtype.byteorder == ">":
                        arr = arr.astype(arr.dtype.newbyteorder("<"))
                    buf = memoryview(arr.reshape(-1).view(np.uint8))
                else:
                    buf = memoryview(data).cast("B")
                need = math.prod(shape) * dtype_of(tag).itemsize
                if buf.nbytes != need:
                    raise ValueError(f"tensor {name!r}: got {buf.nbytes} bytes, expected {need}")
                fh.write(buf)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 8 + len(blob) + offset
