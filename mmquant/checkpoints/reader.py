"""Checkpoints as lazy collections of named tensors: safetensors files, HF folders, .npy / .npz.

:func:`open_checkpoint` accepts

* a ``.safetensors`` file;
* a folder in the Hugging Face layout: ``model.safetensors.index.json`` (whose ``weight_map``
  names the shard of every tensor) and its shards, else ``model.safetensors``, else the folder's
  only ``.safetensors`` file;
* a ``.npy`` file (one tensor, named after the file's stem) or an ``.npz`` file (one tensor per
  member).

Opening reads only headers. :meth:`Checkpoint.read` then maps one tensor (safetensors, .npy) or
reads one member (.npz), so that peak memory is that of the largest tensor, not of the model.
Every file is hostile input: headers and offsets are checked before any data is touched, an index
that names a missing shard or a tensor its shard does not hold is refused, and every failure is
a ``FileNotFoundError`` or a :class:`~mmquant.io.FormatError` that names the file and the problem.

Which tensors are *linear weights* (the ones audited and quantized) is decided by
:func:`select_tensors`: 2-D floating-point tensors whose name ends in ``weight``, both sides at
least :data:`MIN_SIDE`, whose name contains none of :data:`NOT_LINEAR` (embeddings, norms, the
output head); ``--include`` / ``--exclude`` glob patterns add and remove tensors.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmquant.checkpoints.safetensors_file import (
    SafetensorsHeader,
    TensorEntry,
    read_header,
    read_tensor,
    tag_of,
)
from mmquant.io import FormatError

__all__ = [
    "INDEX_NAME",
    "SINGLE_NAME",
    "MIN_SIDE",
    "NOT_LINEAR",
    "EXTRA_FILES",
    "TensorInfo",
    "Checkpoint",
    "open_checkpoint",
    "select_tensors",
    "is_linear_weight",
    "read_covariance",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
#: Smallest side of a tensor taken as a linear weight by default.
MIN_SIDE = 8
#: Name fragments (lower case) of 2-D weights that are not linear layers by default.
NOT_LINEAR = ("embed", "norm", "lm_head", "wte", "wpe", "ln_")
#: Files copied next to an exported checkpoint (glob patterns): configuration and tokenizer.
EXTRA_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "spiece.model",
    "sentencepiece*.model",
)
_MAX_INDEX_BYTES = 64 << 20
_FLOAT_TAGS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of one tensor, and the file that holds it.

    Attributes
    ----------
    name : str
    dtype : str
        Safetensors dtype tag (``"F32"``, ``"BF16"`` ...), also for .npy / .npz tensors.
    shape : tuple of int
    file : str
        Name of the file holding it, relative to :attr:`Checkpoint.root`.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str

    @property
    def size(self) -> int:
        """Number of entries."""
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        """Whether the dtype is a floating-point one."""
        return self.dtype in _FLOAT_TAGS


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint opened lazily (headers only).

    Attributes
    ----------
    path : Path
        What was opened (file or folder).
    root : Path
        Folder of the files (``path`` itself for a folder).
    kind : str
        ``"safetensors"``, ``"sharded"`` (index + shards), ``"npy"`` or ``"npz"``.
    files : tuple of str
        The tensor files, in order (the shards of a sharded checkpoint).
    tensors : dict of str to TensorInfo
        Every tensor, in file order.
    """

    path: Path
    root: Path
    kind: str
    files: tuple[str, ...]
    tensors: dict[str, TensorInfo]
    _entries: dict[str, TensorEntry]

    def info(self, name: str) -> TensorInfo:
        """The :class:`TensorInfo` of ``name`` (``KeyError`` naming the checkpoint if unknown)."""
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor named {name!r}") from None

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a read-only array of its stored dtype (memory-mapped if possible)."""
        info = self.info(name)
        fpath = self.root / info.file
        if self.kind in ("safetensors", "sharded"):
            return read_tensor(self._entries[name], fpath)
        try:
            if self.kind == "npy":
                arr = np.load(fpath, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(fpath, allow_pickle=False) as z:
                    arr = z[name]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise FormatError(f"{fpath}: cannot read tensor {name!r} ({exc})") from None
        if arr.shape != info.shape or tag_of(arr.dtype) != info.dtype:
            raise FormatError(f"{fpath}: tensor {name!r} changed since its header was read")
        return arr

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of ``name`` (little-endian) as a 1-D ``uint8`` array."""
        arr = np.ascontiguousarray(self.read(name))
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return arr.reshape(-1).view(np.uint8)

    def shard_tensors(self, file: str) -> list[str]:
        """Names of the tensors of one file, in file order."""
        return [n for n, t in self.tensors.items() if t.file == file]

    def extra_files(self) -> list[Path]:
        """Configuration and tokenizer files beside the tensors (:data:`EXTRA_FILES`)."""
        if self.kind not in ("safetensors", "sharded") or not self.path.is_dir():
            return []
        out: list[Path] = []
        for f in sorted(self.root.iterdir()):
            if f.is_file() and any(fnmatch.fnmatchcase(f.name, g) for g in EXTRA_FILES):
                out.append(f)
        return out


def _from_headers(
    path: Path, root: Path, kind: str, headers: list[SafetensorsHeader]
) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    entries: dict[str, TensorEntry] = {}
    for h in headers:
        for name, e in h.tensors.items():
            if name in tensors:
                raise FormatError(
                    f"{path}: tensor {name!r} is in both {tensors[name].file} and {h.path.name}"
                )
            tensors[name] = TensorInfo(name, e.dtype, e.shape, h.path.name)
            entries[name] = e
    return Checkpoint(path, root, kind, tuple(h.path.name for h in headers), tensors, entries)


def _shard_name(path: Path, index: Path, name: object, tensor: str) -> str:
    if not isinstance(name, str) or not name.endswith(".safetensors"):
        raise FormatError(f"{index}: tensor {tensor!r} maps to {name!r}, not a .safetensors name")
    if os.sep in name or "/" in name or name in (".", "..") or name.startswith("."):
        raise FormatError(f"{index}: shard name {name!r} is not a plain file name in {path}")
    return name


def _open_index(path: Path, index: Path) -> Checkpoint:
    if index.stat().st_size > _MAX_INDEX_BYTES:
        raise FormatError(f"{index}: index file larger than {_MAX_INDEX_BYTES} bytes")
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{index}: not a JSON index ({exc})") from None
    wmap = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise FormatError(f"{index}: needs a non-empty 'weight_map' object (tensor → shard)")
    shards: list[str] = []
    for tensor, shard in wmap.items():
        s = _shard_name(path, index, shard, tensor)
        if s not in shards:
            shards.append(s)
    for s in shards:
        if not (path / s).is_file():
            raise FileNotFoundError(f"{index} names shard {s!r}, which is not in {path}")
    headers = [read_header(path / s) for s in shards]
    ck = _from_headers(path, path, "sharded", headers)
    for tensor, shard in wmap.items():
        info = ck.tensors.get(tensor)
        if info is None or info.file != shard:
            raise FormatError(f"{index}: tensor {tensor!r} is not in its shard {shard!r}")
    return ck


def _npy_header(fh) -> tuple[np.dtype, tuple[int, ...]]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return dtype, tuple(int(d) for d in shape)


def _npy_info(name: str, file: str, fh) -> TensorInfo:
    try:
        dtype, shape = _npy_header(fh)
        tag = tag_of(dtype)
    except ValueError as exc:
        raise FormatError(
            f"{file}: array {name!r} is not a readable numeric array ({exc})"
        ) from None
    return TensorInfo(name, tag, shape, file)


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint (file or folder) by reading its headers only.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``, a folder without a safetensors checkpoint, or an index naming a
        shard that is not there.
    FormatError
        A damaged header, an index whose tensors are not in their shards, a tensor in two files,
        an unsupported suffix.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        if (p / INDEX_NAME).is_file():
            return _open_index(p, p / INDEX_NAME)
        if (p / SINGLE_NAME).is_file():
            return _from_headers(p, p, "safetensors", [read_header(p / SINGLE_NAME)])
        found = sorted(f.name for f in p.glob("*.safetensors") if f.is_file())
        if len(found) == 1:
            return _from_headers(p, p, "safetensors", [read_header(p / found[0])])
        raise FileNotFoundError(
            f"{p}: no {INDEX_NAME} or {SINGLE_NAME}"
            + (
                f" (and {len(found)} other .safetensors files: {', '.join(found[:4])})"
                if found
                else ""
            )
        )
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _from_headers(p, p.parent, "safetensors", [read_header(p)])
    if suffix == ".npy":
        with open(p, "rb") as fh:
            info = _npy_info(p.stem, p.name, fh)
        return Checkpoint(p, p.parent, "npy", (p.name,), {p.stem: info}, {})
    if suffix == ".npz":
        tensors: dict[str, TensorInfo] = {}
        try:
            with zipfile.ZipFile(p) as zf:
                for member in zf.namelist():
                    if not member.endswith(".npy"):
                        raise FormatError(f"{p}: member {member!r} is not an .npy array")
                    with zf.open(member) as fh:
                        name = member[: -len(".npy")]
                        tensors[name] = _npy_info(name, p.name, fh)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise FormatError(f"{p}: not a readable .npz file ({exc})") from None
        if not tensors:
            raise FormatError(f"{p} holds no arrays")
        return Checkpoint(p, p.parent, "npz", (p.name,), tensors, {})
    raise FormatError(
        f"{p}: unsupported checkpoint {p.suffix or 'without suffix'!r}; expected a .safetensors, "
        ".npy or .npz file or a Hugging Face folder"
    )


def is_linear_weight(info: TensorInfo) -> bool:
    """The default rule: a 2-D float ``*weight`` of sides ≥ :data:`MIN_SIDE`, not embedding/norm/head."""
    low = info.name.lower()
    return (
        info.is_float
        and len(info.shape) == 2
        and min(info.shape) >= MIN_SIDE
        and low.endswith("weight")
        and not any(w in low for w in NOT_LINEAR)
    )


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def select_tensors(
    ckpt: Checkpoint, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[str]:
    """Names of the tensors to quantize, in checkpoint order.

    A tensor is selected if it passes :func:`is_linear_weight` or matches an ``include`` glob, and
    matches no ``exclude`` glob (patterns as :func:`fnmatch.fnmatchcase`, on the full name).
    Included tensors must be floating point with at least one axis.

    Raises
    ------
    ValueError
        An ``include`` / ``exclude`` entry without wildcards that names no tensor, an included
        tensor that is not floating point, or nothing selected.
    """
    include, exclude = list(include or []), list(exclude or [])
    for pat in include + exclude:
        if not _is_glob(pat) and pat not in ckpt.tensors:
            raise ValueError(f"{ckpt.path} has no tensor named {pat!r}")
    out = []
    for name, info in ckpt.tensors.items():
        inc = any(fnmatch.fnmatchcase(name, g) for g in include)
        if not (inc or is_linear_weight(info)):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        if not info.is_float or len(info.shape) == 0 or info.size == 0:
            raise ValueError(
                f"tensor {name!r} ({info.dtype}, shape {info.shape}) cannot be quantized: "
                "need a non-empty floating-point tensor"
            )
        out.append(name)
    if not out:
        raise ValueError(f"no tensor of {ckpt.path} selected (check --include / --exclude)")
    return out


def read_covariance(path: str | os.PathLike[str], name: str, width: int) -> np.ndarray:
    """One Σ_X of a calibration file (:mod:`mmquant.covariances`), read alone and checked.

    Raises
    ------
    KeyError
        The file has no covariance for ``name``.
    ValueError
        Not a calibration file, or Σ_X not a finite symmetric ``width × width`` matrix.
    """
    from mmquant.covariances import CALIB_FORMAT, _check_covariance

    h = read_header(path)
    if h.metadata.get("format") != CALIB_FORMAT:
        raise ValueError(f"{path} is not an mmquant calibration file")
    if name not in h.tensors:
        raise KeyError(f"{path} has no covariance for tensor {name!r}")
    e = h.tensors[name]
    if e.shape != (width, width):
        raise ValueError(
            f"{path}: covariance of {name!r} is {e.shape}, the tensor needs {width}×{width}"
        )
    return _check_covariance(name, np.array(read_tensor(e, path)), str(path))
