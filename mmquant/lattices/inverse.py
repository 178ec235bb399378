"""The inverse rotation of the rows as a flat program: the numpy reference of the decode kernels.

:func:`mmquant.rotations.rotation` ``(n, seed)`` is, for every ``n``, a randomized Hadamard
rotation (one block) or a block Hadamard rotation (two layers of blocks, signs and a
permutation). Its inverse is written here as an :class:`InverseProgram` of flat arrays that the
numba kernels (:mod:`mmquant.kernels.rotation`) run per row, fused with the decoder that writes
the row (:mod:`mmquant.trellis.quantizer`); :func:`inverse_rows` runs the same program with numpy
and gives the same bits: float64 throughout, the fast Walsh–Hadamard butterflies ``(a + b,
a − b)`` level by level, the sums over a small Hadamard factor (order 12, 20 or 28) taken in
the order ``c = 0, 1, …, m − 1``, then the scale ``1/√b`` and the signs. For ``n`` a power of
two this is bit for bit :meth:`~mmquant.rotations.RandomizedHadamard.inverse`; otherwise the
sums over the small factor (which ``numpy.einsum`` orders its own way) may differ from it in
the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from mmquant.rotations import (
    HADAMARD_ORDERS,
    BlockHadamard,
    RandomizedHadamard,
    fwht,
    hadamard_matrix,
    rotation,
)
from mmquant.validation import check_int

__all__ = ["PROGRAM_ORDERS", "InverseProgram", "inverse_program", "inverse_rows"]

#: Orders of the small Hadamard factors an :class:`InverseProgram` indexes (``hmt[mi]``).
PROGRAM_ORDERS: tuple[int, ...] = (1, *HADAMARD_ORDERS)


@dataclass(frozen=True)
class InverseProgram:
    """The inverse of ``rotation(n, seed)`` as flat read-only arrays.

    Steps, on a row ``x`` of length ``n``: every block of layer A (``blocks[:n_a]``), then
    ``x *= signs_a``; if ``perm`` is not empty, the scatter ``x[w + perm[i]] = x[w + i]``; every
    block of layer B (``blocks[n_a:]``), then, if ``signs_b`` is not empty, ``x *= signs_b``.
    Block ``k = (lo, mi, p)`` covers ``x[lo : lo + m·p]`` with ``m = PROGRAM_ORDERS[mi]``: the
    fast Walsh–Hadamard transform of each of its ``m`` runs of ``p`` entries, then (``m > 1``)
    ``y[a·p + j] = Σ_c hmt[mi, a, c]·x[c·p + j]`` (``c`` ascending), then times ``scales[k]``
    ``= 1/√(m·p)``.

    :class:`~mmquant.rotations.RandomizedHadamard`: one block, ``signs_a`` its signs.
    :class:`~mmquant.rotations.BlockHadamard`: layer A its second layer (blocks from the end),
    ``signs_a = D₂``, ``perm = P`` at ``w = n − b₁``, layer B its first layer, ``signs_b = D₁``.
    """

    n: int
    blocks: np.ndarray
    scales: np.ndarray
    n_a: int
    signs_a: np.ndarray
    perm: np.ndarray
    w: int
    signs_b: np.ndarray
    hmt: np.ndarray


@cache
def _hmt() -> np.ndarray:
    m_max = max(PROGRAM_ORDERS)
    out = np.zeros((len(PROGRAM_ORDERS), m_max, m_max))
    for i, m in enumerate(PROGRAM_ORDERS):
        out[i, :m, :m] = hadamard_matrix(m).T
    out.setflags(write=False)
    return out


def _split(b: int) -> tuple[int, int]:
    for mi, m in enumerate(PROGRAM_ORDERS):
        if b % m == 0 and (b // m) & (b // m - 1) == 0:
            return mi, b // m
    raise AssertionError(f"block of length {b} has no Hadamard matrix")  # pragma: no cover


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@lru_cache(maxsize=64)
def inverse_program(n: int, seed: int = 0) -> InverseProgram:
    """The :class:`InverseProgram` of ``rotation(n, seed)`` (``kind="auto"``), cached.

    Parameters
    ----------
    n : int
        Row length, at least 1.
    seed : int
        Seed of the rotation.
    """
    n = check_int(n, "n", lo=1)
    seed = check_int(seed, "seed", lo=0)
    rot = rotation(n, seed)
    if isinstance(rot, RandomizedHadamard):
        spans, n_a = [(0, n)], 1
        sa, perm, w, sb = rot.signs, np.zeros(0, np.int64), 0, np.zeros(0)
    else:
        assert isinstance(rot, BlockHadamard)
        first, second, lo = [], [], 0
        for b in rot.blocks:
            first.append((lo, b))
            second.append((n - lo - b, b))
            lo += b
        spans, n_a = second + first, len(second)
        sa, sb = rot.signs[1], rot.signs[0]
        perm, w = rot.permutation.astype(np.int64), n - rot.blocks[0]
    blocks = [(lo, *_split(b)) for lo, b in spans]
    scales = [np.float64(1.0) / np.sqrt(np.float64(b)) for _, b in spans]
    return InverseProgram(
        n=n,
        blocks=_frozen(np.array(blocks, np.int64).reshape(-1, 3)),
        scales=_frozen(np.array(scales, np.float64)),
        n_a=n_a,
        signs_a=_frozen(np.asarray(sa, np.float64)),
        perm=_frozen(perm),
        w=int(w),
        signs_b=_frozen(np.asarray(sb, np.float64)),
        hmt=_hmt(),
    )


def _run_blocks(y: np.ndarray, prog: InverseProgram, k0: int, k1: int) -> None:
    for k in range(k0, k1):
        lo, mi, p = (int(v) for v in prog.blocks[k])
        m = PROGRAM_ORDERS[mi]
        v = fwht(y[:, lo : lo + m * p].reshape(-1, m, p))
        if m > 1:
            h = prog.hmt[mi]
            out = np.empty_like(v)
            for a in range(m):
                acc = h[a, 0] * v[:, 0]
                for c in range(1, m):
                    acc = acc + h[a, c] * v[:, c]
                out[:, a] = acc
            v = out
        y[:, lo : lo + m * p] = v.reshape(-1, m * p) * prog.scales[k]


def inverse_rows(y: np.ndarray, prog: InverseProgram) -> np.ndarray:
    """Run ``prog`` on every row of ``y`` (float64 (R, n), C-contiguous) in place; returns ``y``.

    Equal to ``rotation(n, seed).inverse(y)`` up to the last bit (see the module docstring).
    """
    if not isinstance(y, np.ndarray) or y.dtype != np.float64 or y.ndim != 2:
        raise ValueError("inverse_rows needs a 2-D float64 array")
    if y.shape[1] != prog.n:
        raise ValueError(f"inverse_rows: rows of length {prog.n} expected, got {y.shape[1]}")
    _run_blocks(y, prog, 0, prog.n_a)
    y *= prog.signs_a
    if prog.perm.size:
        y[:, prog.w + prog.perm] = y[:, prog.w :].copy()
    _run_blocks(y, prog, prog.n_a, prog.blocks.shape[0])
    if prog.signs_b.size:
        y *= prog.signs_b
    return y
