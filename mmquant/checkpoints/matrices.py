"""Matrix pairs from files, for ``mmquant compare --data A,B``.

A pair is written ``A,B``, several pairs ``A1,B1;A2,B2``. Each side is one of

* ``FILE.npy``;
* ``FILE.npz`` (its only array) or ``FILE.npz:KEY``;
* ``FILE.safetensors:TENSOR`` or ``FOLDER:TENSOR`` (a Hugging Face checkpoint folder).

Both matrices are stored with their rows along the inner dimension ``n``, as a linear layer's
weight ``W`` (``out × in``) and its inputs ``X`` (``tokens × in``) are: the product is ``A Bᵀ``
(``W Xᵀ``), and the quantizers work along the rows of ``A`` and of ``B``. In the convention of
:class:`mmquant.data.MatrixPair` (product ``aᵀb``) the pair is ``(Aᵀ, Bᵀ)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmquant.checkpoints.reader import open_checkpoint
from mmquant.data import MatrixPair

__all__ = ["FILE_SUFFIXES", "is_file_data", "load_matrix", "file_pairs"]

FILE_SUFFIXES = (".npy", ".npz", ".safetensors")


def is_file_data(data: str) -> bool:
    """Whether a ``--data`` value names files (rather than a registered source like ``gaussian``)."""
    low = data.lower()
    return any(s in low for s in FILE_SUFFIXES) or "," in data


def load_matrix(ref: str) -> np.ndarray:
    """The 2-D matrix named by ``ref`` (see the module docstring), as float32 or float64.

    Raises
    ------
    FileNotFoundError
        No such file or folder.
    ValueError
        A missing ``:TENSOR`` where one is needed, an unknown tensor, a tensor that is not a 2-D
        finite floating-point matrix.
    """
    ref = ref.strip()
    path, key = Path(ref), None
    if not path.exists() and ":" in ref:
        head, _, key = ref.rpartition(":")
        path = Path(head)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    ck = open_checkpoint(path)
    if key is None:
        if len(ck.tensors) != 1:
            raise ValueError(
                f"{path} holds {len(ck.tensors)} tensors: name one as {path}:TENSOR "
                f"(e.g. {next(iter(ck.tensors))!r})"
            )
        key = next(iter(ck.tensors))
    info = ck.info(key)
    if not info.is_float or len(info.shape) != 2 or info.size == 0:
        raise ValueError(
            f"{ref}: {info.dtype} tensor of shape {info.shape}; need a non-empty 2-D float matrix"
        )
    arr = ck.read(key)
    m = np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{ref} holds NaN or Inf")
    return m


def file_pairs(data: str) -> list[MatrixPair]:
    """Parse ``A,B[;A2,B2...]`` and load the pairs (product ``A Bᵀ``; see the module docstring).

    Raises
    ------
    ValueError
        A pair that is not two comma-separated matrices, or matrices of different row lengths.
    """
    out = []
    for part in data.split(";"):
        if not part.strip():
            continue
        sides = part.split(",")
        if len(sides) != 2 or not all(s.strip() for s in sides):
            raise ValueError(f"--data pair {part!r} must be two matrices: A,B (product A·Bᵀ)")
        a, b = (load_matrix(s) for s in sides)
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"{sides[0]} is {a.shape[0]}×{a.shape[1]} and {sides[1]} is "
                f"{b.shape[0]}×{b.shape[1]}: A·Bᵀ needs rows of the same length"
            )
        label = f"{Path(sides[0].strip()).name}·{Path(sides[1].strip()).name}ᵀ"
        out.append(MatrixPair(label, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)))
    if not out:
        raise ValueError("--data names no matrix pair")
    return out
