"""Numba encoder of the row-normalised scalar codebook quantizers (mmquant.formats.compander).

Bit-exact with the numpy reference :func:`mmquant.formats.compander.encode_rows` (tests check
it): the same float32 operations
``inv = 1/σ`` (float32), ``u = float32(x)·inv``, and the index of the cell is the number of
thresholds ``t ≤ u`` (``searchsorted(..., side='right')``): counted directly (one vectorised pass
per threshold) up to 32 levels, else found from a lower bound read in a
uniform-grid table over the thresholds followed by a fixed number of branch-free comparison
steps (enough for the densest stretch of thresholds). Serial kernels (``parallel=True`` cost more
compile time than it saved run time on these memory-bound loops); they release the GIL.
Importing this module compiles nothing; the
first call compiles (cached on disk when possible). Raises ImportError without numba. Packing
and decoding (``σ_row · points[code]``, one group per row) use :func:`mmquant.kernels.formats.pack`
and :func:`~mmquant.kernels.formats.decode_table`.
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import numba_cache

__all__ = ["encode_rows_fast", "encode_rows_inv"]

#: Up to this many thresholds (32 levels) a linear count beats the table search.
_LINEAR_MAX = 31

_CACHE = numba_cache()  # False in a read-only install without a writable cache folder


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _encode(x, inv, tpad, t0, inv_w, lo, m, out):  # pragma: no cover - compiled
    rows, n = x.shape
    nb = lo.size
    for i in range(rows):
        s = inv[i]
        base = i * n
        for j in range(n):
            u = np.float32(x[i, j]) * s
            # lower bound of the answer from a uniform-grid table (one bin of slack for the
            # rounding of f), then m branch-free steps of the exact comparison
            f = (u - t0) * inv_w
            if f < 1.0:
                b = 0
            elif f >= nb:
                b = nb - 1
            else:
                b = int(f) - 1
            idx = lo[b]
            for _ in range(m):
                idx += np.int32(tpad[idx] <= u)
            out[base + j] = idx


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _encode_linear(x, inv, t, out):  # pragma: no cover - compiled
    # few thresholds: count t_k <= u with one vectorisable pass over the row per threshold
    rows, n = x.shape
    nt = t.size
    u = np.empty(n, np.float32)
    c = np.empty(n, np.uint8)
    for i in range(rows):
        s = inv[i]
        for j in range(n):
            u[j] = np.float32(x[i, j]) * s
            c[j] = 0
        for k in range(nt):
            tk = t[k]
            for j in range(n):
                c[j] += np.uint8(u[j] >= tk)
        base = i * n
        for j in range(n):
            out[base + j] = c[j]


def _start_table(t: np.ndarray) -> tuple[np.float32, np.float32, np.ndarray, int, np.ndarray]:
    """Uniform grid over [t_0, t_last] with 16 bins per level and ``lo[b] = #{t < edge_b}``.

    Returns ``(t0, 1/bin width, lo, m, tpad)``: for a value whose computed bin is ``b`` (off by at
    most one from the true bin), the answer lies in ``[lo[b−1], lo[b−1] + m]``; ``tpad`` is ``t``
    followed by ``m + 1`` copies of +inf so that the branch-free steps never read past the end.
    """
    nt = t.size
    nb = int(min(16 * (nt + 1), 1 << 16))
    t0 = np.float32(t[0])
    span = float(t[-1]) - float(t0)
    inv_w = np.float32(nb / span if span > 0 else 0.0)
    edges = float(t0) + np.arange(nb + 1) * (span / nb)
    lo_ext = np.searchsorted(t.astype(np.float64), edges, "left").astype(np.int32)
    lo_ext[-1] = nt
    b = np.arange(nb)
    m = int(np.max(lo_ext[np.minimum(b + 2, nb)] - lo_ext[np.maximum(b - 1, 0)])) + 1
    tpad = np.concatenate([t, np.full(m + 1, np.inf, np.float32)])
    return t0, inv_w, np.ascontiguousarray(lo_ext[:nb]), m, tpad


def encode_rows_fast(x2: np.ndarray, scales: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Same result as :func:`mmquant.formats.compander.encode_rows` (uint8 cell indices).

    The table lookup only gives a starting index ≤ the answer (the bin before the one the value
    falls in, so rounding of the bin index cannot overshoot); the exact float32 comparisons
    ``u >= t[idx]`` decide, as in the reference.
    """
    s = scales.astype(np.float32)
    inv = np.zeros_like(s)
    np.divide(np.float32(1.0), s, out=inv, where=s > 0)
    return encode_rows_inv(x2, inv, thresholds)


def encode_rows_inv(x2: np.ndarray, inv: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """uint8 number of thresholds ``≤ fl32(x)·inv_row`` (``inv``: float32 ``1/σ`` per row)."""
    # float32 input only (one compiled specialisation): u = float32(x)·inv, as the reference
    x2 = np.ascontiguousarray(x2, np.float32)
    inv = np.ascontiguousarray(inv, np.float32).reshape(-1)
    if inv.size != x2.shape[0]:
        raise ValueError(f"encode_rows_inv: {inv.size} multipliers for {x2.shape[0]} rows")
    t = np.ascontiguousarray(thresholds, np.float32)
    if t.size + 1 > 256:
        raise ValueError(f"at most 256 levels (uint8 codes), got {t.size + 1}")
    out = np.empty(x2.size, np.uint8)
    if t.size <= _LINEAR_MAX:
        _encode_linear(x2, inv, t, out)
    else:
        t0, inv_w, lo, m, tpad = _start_table(t)
        _encode(x2, inv, tpad, t0, inv_w, lo, m, out)
    return out
