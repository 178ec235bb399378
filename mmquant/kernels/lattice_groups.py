"""Numba kernels for scale indices coded in groups (:mod:`mmquant.lattices.grouping`).

The budget-constrained dynamic programme, one group per iteration: its forward pass alone (the
least total error of every group) and the choice itself; and the row gather that picks every
block's arrays at its chosen scale. Bit-identical to the numpy reference (the same additions and
strict comparisons in the same order); compiled on first use and cached on disk like every kernel
of :mod:`mmquant.kernels`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from mmquant.kernels import numba_cache

__all__ = ["group_minima_kernel", "group_choose_kernel", "gather_rows_kernel"]

_CACHE = numba_cache()  # False in a read-only install without a writable cache folder


@nb.njit(parallel=True, cache=_CACHE)
def _group_minima(e, weights, budget, group, out):
    """Per group of ``group`` consecutive blocks: the least total error within the budget.

    The forward pass of :func:`mmquant.lattices.grouping._forward` (same additions, the same
    strict comparisons in the same order), one group per iteration.
    """
    n, k = e.shape
    n_groups = out.shape[0]
    for gi in nb.prange(n_groups):
        f = np.full(budget + 1, np.inf)
        h = np.empty(budget + 1)
        f[0] = 0.0
        for b in range(gi * group, min(n, (gi + 1) * group)):
            for s in range(budget + 1):
                h[s] = np.inf
            for j in range(k):
                w = weights[j]
                for s in range(w, budget + 1):
                    c = f[s - w] + e[b, j]
                    if c < h[s]:
                        h[s] = c
            for s in range(budget + 1):
                f[s] = h[s]
        m = f[0]
        for s in range(1, budget + 1):
            if f[s] < m:
                m = f[s]
        out[gi] = m


def group_minima_kernel(err, weights, group, budget):
    """Numba version of the per-group least errors of :func:`mmquant.lattices.grouping.least_error`."""
    e = np.ascontiguousarray(err, dtype=np.float64)
    out = np.empty(-(-e.shape[0] // group))
    _group_minima(e, np.asarray(weights, np.int64), int(budget), int(group), out)
    return out


@nb.njit(parallel=True, cache=_CACHE)
def _group_choose(e, weights, budget, group, out):
    """:func:`mmquant.lattices.grouping.choose` per group: forward pass keeping the choices,
    then the walk back from the least total (the smallest total weight on ties)."""
    n, k = e.shape
    n_groups = (n + group - 1) // group
    for gi in nb.prange(n_groups):
        lo = gi * group
        g = min(n, lo + group) - lo
        f = np.full(budget + 1, np.inf)
        h = np.empty(budget + 1)
        pick = np.zeros((g, budget + 1), np.int64)
        f[0] = 0.0
        for b in range(g):
            for s in range(budget + 1):
                h[s] = np.inf
            for j in range(k):
                w = weights[j]
                for s in range(w, budget + 1):
                    c = f[s - w] + e[lo + b, j]
                    if c < h[s]:
                        h[s] = c
                        pick[b, s] = j
            for s in range(budget + 1):
                f[s] = h[s]
        s = 0
        for t in range(1, budget + 1):
            if f[t] < f[s]:
                s = t
        for b in range(g - 1, -1, -1):
            j = pick[b, s]
            out[lo + b] = j
            s -= weights[j]


def group_choose_kernel(err, weights, group, budget):
    """Numba version of :func:`mmquant.lattices.grouping.choose` (the same choices)."""
    e = np.ascontiguousarray(err, dtype=np.float64)
    out = np.empty(e.shape[0], np.int64)
    _group_choose(e, np.asarray(weights, np.int64), int(budget), int(group), out)
    return out


@nb.njit(cache=_CACHE)
def _gather_rows(a, arrs, out):
    """out[b] = arrs[a[b]][b] for every row b (a selection between k equal-shaped arrays).

    Serial: a memory copy gains little from threads, and ``parallel=True`` would triple its
    compile time.
    """
    for b in range(a.shape[0]):
        src = arrs[a[b]]
        for i in range(out.shape[1]):
            out[b, i] = src[b, i]


def gather_rows_kernel(a, arrs):
    """Row ``b`` of ``arrs[a[b]]`` for every b; ``arrs`` are k arrays of one shape and dtype."""
    first = arrs[0]
    # rows as raw bytes: one compiled specialisation for every dtype (a copy is exact)
    two = tuple(np.ascontiguousarray(x).reshape(first.shape[0], -1).view(np.uint8) for x in arrs)
    out = np.empty_like(two[0])
    _gather_rows(np.ascontiguousarray(a, dtype=np.int64), two, out)
    return out.view(first.dtype).reshape(first.shape)
