"""Numba kernels of the inverse row rotation (:mod:`mmquant.lattices.inverse`), float64.

:func:`inverse_row` runs an :class:`~mmquant.lattices.inverse.InverseProgram` (passed as its
arrays) on one row in place: the same operations in the same order as the numpy reference
:func:`mmquant.lattices.inverse.inverse_rows` (no fastmath), so the same bits. The fast
Walsh–Hadamard transform takes its first three levels in registers (a run of 8 entries: the
same butterflies on the same values as three passes) and the last level fused with the scale
``1/√b`` (and the signs, for a one-block program); the middle levels are loops over contiguous
runs that LLVM vectorises. Decoders call it per row on the row they have just written
(:mod:`mmquant.kernels.trellis`); :func:`inverse_rows` runs it over the rows of an array on
every thread.

Importing this module compiles nothing; the first call compiles (cached on disk when possible).
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import numba_cache

__all__ = ["inverse_row", "inverse_rows"]

_CACHE = numba_cache()


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _fwht8(v, p):  # pragma: no cover
    """The first three butterfly levels (h = 1, 2, 4) of every run of 8 entries of ``v[:p]``."""
    for i in range(0, p, 8):
        u = v[i : i + 8]
        a0, a1, a2, a3 = u[0] + u[1], u[0] - u[1], u[2] + u[3], u[2] - u[3]
        a4, a5, a6, a7 = u[4] + u[5], u[4] - u[5], u[6] + u[7], u[6] - u[7]
        b0, b2, b1, b3 = a0 + a2, a0 - a2, a1 + a3, a1 - a3
        b4, b6, b5, b7 = a4 + a6, a4 - a6, a5 + a7, a5 - a7
        u[0], u[4], u[1], u[5] = b0 + b4, b0 - b4, b1 + b5, b1 - b5
        u[2], u[6], u[3], u[7] = b2 + b6, b2 - b6, b3 + b7, b3 - b7


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _level(v, p, h):  # pragma: no cover
    for i in range(0, p, 2 * h):
        x = v[i : i + h]
        y = v[i + h : i + 2 * h]
        for j in range(h):
            a = x[j]
            b = y[j]
            x[j] = a + b
            y[j] = a - b


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _last_level(v, p, c, s):  # pragma: no cover
    """Level ``h = p/2`` with ``(· × c) × s`` (``s``: the run's signs; empty for none)."""
    h = p // 2
    x = v[:h]
    y = v[h:p]
    if s.size:
        sx = s[:h]
        sy = s[h:p]
        for j in range(h):
            a = x[j]
            b = y[j]
            x[j] = ((a + b) * c) * sx[j]
            y[j] = ((a - b) * c) * sy[j]
    else:
        for j in range(h):
            a = x[j]
            b = y[j]
            x[j] = (a + b) * c
            y[j] = (a - b) * c


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _fwht(v, p, c, s):  # pragma: no cover
    """Unnormalised FWHT of ``v[:p]`` (p a power of two), then ``× c`` and ``× s`` if ``c`` is
    not NaN (NaN: no scaling)."""
    if p >= 8:
        _fwht8(v, p)
        h = 8
    else:
        h = 1
    last = np.isfinite(c) and p >= 2
    while h < p:
        if last and 2 * h == p:
            _last_level(v, p, c, s)
            return
        _level(v, p, h)
        h *= 2
    if np.isfinite(c):  # p = 1 or 8: no level left to fuse the scale with
        if s.size:
            for j in range(p):
                v[j] = (v[j] * c) * s[j]
        else:
            for j in range(p):
                v[j] = v[j] * c


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _blocks(x, buf, blocks, scales, k0, k1, hmt, signs):  # pragma: no cover
    """Blocks ``k0 .. k1 − 1`` on ``x``; with ``signs`` (not empty, one block) the signs are
    applied in the block's last step."""
    nan = np.float64(np.nan)
    for k in range(k0, k1):
        lo = blocks[k, 0]
        mi = blocks[k, 1]
        p = blocks[k, 2]
        c = scales[k]
        if mi == 0:
            _fwht(x[lo : lo + p], p, c, signs)
            continue
        m = 12 if mi == 1 else (20 if mi == 2 else 28)
        for a in range(m):
            _fwht(x[lo + a * p : lo + (a + 1) * p], p, nan, signs[:0])
        h = hmt[mi]
        y = buf[: m * p]
        for j in range(p):
            for a in range(m):
                ha = h[a]
                acc = ha[0] * x[lo + j]
                for cc in range(1, m):
                    acc = acc + ha[cc] * x[lo + cc * p + j]
                y[a * p + j] = acc * c
        if signs.size:
            for i in range(m * p):
                x[lo + i] = y[i] * signs[i]
        else:
            for i in range(m * p):
                x[lo + i] = y[i]


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def inverse_row(x, buf, blocks, scales, n_a, sa, perm, w, sb, hmt):  # pragma: no cover
    """The inverse program on the row ``x`` (float64, length n) in place; ``buf``: float64
    scratch of at least ``n`` entries."""
    n = x.shape[0]
    nb = blocks.shape[0]
    if nb == 1 and n_a == 1 and perm.size == 0 and sb.size == 0:
        _blocks(x, buf, blocks, scales, 0, 1, hmt, sa)
        return
    _blocks(x, buf, blocks, scales, 0, n_a, hmt, sa[:0])
    for i in range(n):
        x[i] = x[i] * sa[i]
    q = perm.size
    if q:
        for i in range(q):
            buf[i] = x[w + i]
        for i in range(q):
            x[w + perm[i]] = buf[i]
    _blocks(x, buf, blocks, scales, n_a, nb, hmt, sa[:0])
    if sb.size:
        for i in range(n):
            x[i] = x[i] * sb[i]


@numba.njit(cache=_CACHE, fastmath=False, nogil=True, parallel=True)
def _inverse_rows(y, blocks, scales, n_a, sa, perm, w, sb, hmt, nw):  # pragma: no cover
    R, n = y.shape
    for wk in numba.prange(nw):
        buf = np.empty(n, np.float64)
        r0 = wk * R // nw
        r1 = (wk + 1) * R // nw
        for r in range(r0, r1):
            inverse_row(y[r], buf, blocks, scales, n_a, sa, perm, w, sb, hmt)


def inverse_rows(y: np.ndarray, prog: object) -> np.ndarray:
    """Same as :func:`mmquant.lattices.inverse.inverse_rows` (in place on float64 (R, n))."""
    if not isinstance(y, np.ndarray) or y.dtype != np.float64 or y.ndim != 2:
        raise ValueError("inverse_rows needs a 2-D float64 array")
    if y.shape[1] != prog.n or not y.flags.c_contiguous:
        raise ValueError(f"inverse_rows: C-contiguous rows of length {prog.n} expected")
    nw = max(1, min(y.shape[0], numba.get_num_threads()))
    _inverse_rows(y, *program_args(prog), nw)
    return y


def program_args(prog: object) -> tuple:
    """The arrays of an :class:`~mmquant.lattices.inverse.InverseProgram` in kernel order."""
    return (
        prog.blocks,
        prog.scales,
        prog.n_a,
        prog.signs_a,
        prog.perm,
        prog.w,
        prog.signs_b,
        prog.hmt,
    )
