"""Numba kernel of the rate–distortion Viterbi search of the TCQ column code (trellis-SIC).

Bit-exact with :func:`mmquant.trellis.viterbi.viterbi_rd` (tests check it): the same float64
operations in the same order, the first minimum on ties, without fastmath. One row per call and
serial (a column is short; a thread launch per column would cost more than its search).

Importing this module compiles nothing; the first call compiles (cached on disk when possible).
Raises ImportError without numba.
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import numba_cache

__all__ = ["viterbi_rd"]

_CACHE = numba_cache()


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _rd_costs(x, rtab, roff, lam, cv, lv):  # pragma: no cover
    last = rtab.size - 1
    for c in range(4):
        cf = float(c)
        lo = cf + 4.0 * np.floor((2.0 * x - cf) * 0.25)
        best = np.inf
        bi = 0
        for k in range(2):
            i = lo + 4.0 * k
            ii = np.int64(i)
            e = x - 0.5 * i
            r = min(max(ii + roff, 0), last)
            v = e * e + lam * rtab[r]
            if v < best:
                best = v
                bi = ii
        cv[c] = best
        lv[c] = bi


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _rd(x, labels, W, rtab, roff, lam, out):  # pragma: no cover
    T = x.size
    N = 1 << W
    G = N >> 1
    d = np.full(N, np.inf)
    d[0] = 0.0
    dn = np.empty(N)
    m = np.empty(G)
    bp = np.empty((T, G), np.uint8)
    cv = np.empty(4)
    lv = np.empty(4, np.int64)
    for t in range(T):
        _rd_costs(x[t], rtab, roff, lam, cv, lv)
        bt = bp[t]
        for g in range(G):
            a0 = d[g]
            a1 = d[g + G]
            if a1 < a0:
                m[g] = a1
                bt[g] = 1
            else:
                m[g] = a0
                bt[g] = 0
        for s in range(N):
            dn[s] = m[s >> 1] + cv[labels[s]]
        d, dn = dn, d
    s = 0
    bv = d[0]
    for k in range(1, N):
        if d[k] < bv:
            bv = d[k]
            s = k
    for t in range(T - 1, -1, -1):
        _rd_costs(x[t], rtab, roff, lam, cv, lv)
        out[t] = lv[labels[s]]
        g = s >> 1
        s = (np.int64(bp[t, g]) << (W - 1)) | g


def viterbi_rd(
    x: np.ndarray, labels: np.ndarray, W: int, rtab: np.ndarray, roff: int, lam: float
) -> np.ndarray:
    """Same levels as :func:`mmquant.trellis.viterbi.viterbi_rd` (int64 (T,)); one row, serial
    (a thread launch per row would cost more than the search of a short row)."""
    x = np.ascontiguousarray(x, np.float64)
    out = np.empty(x.size, np.int64)
    _rd(
        x,
        np.array(labels, np.uint8, order="C"),
        int(W),
        np.ascontiguousarray(rtab, np.float64),
        int(roff),
        float(lam),
        out,
    )
    return out
