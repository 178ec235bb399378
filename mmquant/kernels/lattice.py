"""Numba kernels for the E8 / D4 / Z⁸ closest point and the Voronoi code (imported lazily).

Each kernel performs exactly the floating-point operations of the numpy reference in
:mod:`mmquant.lattices.closest` and :mod:`mmquant.lattices.voronoi`, in the same order (sums of
squares left to right, first index on ties), so the results are bit-identical (tests check).
Blocks are processed in parallel (``numba.prange``) in chunks, with per-chunk scratch buffers.
The E8 closest point is branch-free (selects, unsigned indices) and runs on tiles of blocks
transposed to structure-of-arrays scratch, so that LLVM vectorises it across blocks. The Voronoi
encoder works the same way in two phases per tile: the nearest lattice point, its error and its
largest relevant inner product for every β (vectorised), then per block the membership test, the
projection search and the selection rule, with bounds that skip what cannot be chosen. For the
scale indices coded in groups (:mod:`mmquant.lattices.grouping`): the budget-constrained dynamic
programme (its forward pass alone, and the choice), one group per iteration, and a row gather.

Compilation: the helpers are compiled once each and inlined by LLVM (``forceinline=True``), not
copied into their callers by numba (``inline="always"``, whose cost grows with every copy: the
encoder took about 3 CPU-minutes to compile that way, 13 s this way, for the same machine code
speed). They are compiled without reference counting (``_nrt=False``): they only read and write
arrays their caller owns and allocate none, and atomic reference-count updates left at every
call would otherwise slow the inner loops down by half.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from mmquant.kernels import numba_cache
from mmquant.lattices.closest import lattice
from mmquant.lattices.voronoi import PROJECT_MARGINS, PROJECT_STEPS

__all__ = [
    "closest_kernel",
    "voronoi_encode_kernel",
    "voronoi_decode_kernel",
    "group_minima_kernel",
    "group_choose_kernel",
    "gather_rows_kernel",
]

_LAT_CODE = {"e8": 0, "d4": 1, "zn": 2}
_CHUNK = 1024
_TILE = 64  # blocks per structure-of-arrays tile in the E8 closest-point kernel
_CACHE = numba_cache()  # False in a read-only install without a writable cache folder
#: Options of the helpers: inlined by LLVM, no reference counting (see the module docstring).
_HELPER = {"forceinline": True, "_nrt": False, "cache": _CACHE}


@nb.njit(**_HELPER)
def _dn(x, out, off, d):
    """Closest point of D_d to x[off:off+d] into out[off:off+d] (same tie rule as numpy)."""
    s = 0
    for i in range(off, off + d):
        f = np.floor(x[i] + 0.5)
        out[i] = f
        s += np.int64(f) & 1
    if s & 1:
        k = off
        best = -1.0
        for i in range(off, off + d):
            a = abs(x[i] - out[i])
            if a > best:
                best = a
                k = i
        if x[k] - out[k] >= 0:
            out[k] += 1.0
        else:
            out[k] -= 1.0


@nb.njit(**_HELPER)
def _psum8(v0, v1, v2, v3, v4, v5, v6, v7):
    """Sum of 8 values in numpy's pairwise order (``np.sum`` over a length-8 axis)."""
    return ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))


@nb.njit(**_HELPER)
def _odd(s):
    """``s % 2 != 0`` for an integer-valued float sum s, as numpy has it (True for ±inf, NaN)."""
    h = 0.5 * s
    return h - np.floor(h) != 0.0


@nb.njit(**_HELPER)
def _coset_coords(xi, i, k0, s0, k1, s1):
    """Coordinate i of both E8 coset candidates, ⌊x+½⌋ and ⌊x⌋+½, with their parity fixes
    (coordinate k moved by s); recomputed rather than stored, which keeps the tile loop in
    registers."""
    a = np.floor(xi + 0.5)
    b = np.floor(xi) + 0.5
    a = a + s0 if k0 == i else a
    b = b + s1 if k1 == i else b
    return a, b


@nb.njit(**_HELPER)
def _e8_at(x, xo, xs, out, oo, os):
    """Closest E8 point of x[xo + i·xs] (i < 8) into out[oo + i·os], branch-free.

    Indices are unsigned (no negative-index wraparound), the argmax is a chain of selects (first
    index on ties) and every output is a select, so LLVM vectorises a loop over blocks calling
    this. The float operations are those of :func:`mmquant.lattices.closest.closest_e8`: the
    parity test sums the rounded coordinates in numpy's pairwise order (``np.sum`` over a
    length-8 axis) and checks ``s % 2 != 0`` (so an overflowing sum counts as odd, as in numpy).
    In a row with a NaN or ±inf coordinate numpy re-rounds the first NaN error, i.e. a
    non-finite coordinate, which leaves it unchanged, and keeps the integer coset (d0 is NaN);
    here such a row simply gets no parity fix, which is the same ``⌊x + ½⌋``.
    """
    a0 = np.floor(x[xo] + 0.5)
    a1 = np.floor(x[xo + xs] + 0.5)
    a2 = np.floor(x[xo + np.uint64(2) * xs] + 0.5)
    a3 = np.floor(x[xo + np.uint64(3) * xs] + 0.5)
    a4 = np.floor(x[xo + np.uint64(4) * xs] + 0.5)
    a5 = np.floor(x[xo + np.uint64(5) * xs] + 0.5)
    a6 = np.floor(x[xo + np.uint64(6) * xs] + 0.5)
    a7 = np.floor(x[xo + np.uint64(7) * xs] + 0.5)
    f0 = np.floor(x[xo])
    f1 = np.floor(x[xo + xs])
    f2 = np.floor(x[xo + np.uint64(2) * xs])
    f3 = np.floor(x[xo + np.uint64(3) * xs])
    f4 = np.floor(x[xo + np.uint64(4) * xs])
    f5 = np.floor(x[xo + np.uint64(5) * xs])
    f6 = np.floor(x[xo + np.uint64(6) * xs])
    f7 = np.floor(x[xo + np.uint64(7) * xs])
    odd0 = _odd(_psum8(a0, a1, a2, a3, a4, a5, a6, a7))
    # c1 = ⌊x⌋ + ½; its parity is that of c1 − ½ (as numpy computes it)
    odd1 = _odd(
        _psum8(
            (f0 + 0.5) - 0.5,
            (f1 + 0.5) - 0.5,
            (f2 + 0.5) - 0.5,
            (f3 + 0.5) - 0.5,
            (f4 + 0.5) - 0.5,
            (f5 + 0.5) - 0.5,
            (f6 + 0.5) - 0.5,
            (f7 + 0.5) - 0.5,
        )
    )
    # argmax of |x_i − c_i| (first index on ties): k, and the sign of x_k − c_k
    m0 = -1.0
    m1 = -1.0
    k0 = 0.0
    k1 = 0.0
    v0 = 0.0
    v1 = 0.0
    e = 0.0  # NaN iff some x_i − c_i is NaN (x_i NaN or ±inf); |x_i − c_i| ≤ 1 otherwise
    for i in range(8):
        xi = x[xo + np.uint64(i) * xs]
        va = xi - np.floor(xi + 0.5)
        vb = xi - (np.floor(xi) + 0.5)
        e += va
        da = abs(va)
        db = abs(vb)
        ca = da > m0
        cb = db > m1
        m0 = da if ca else m0
        k0 = float(i) if ca else k0
        v0 = va if ca else v0
        m1 = db if cb else m1
        k1 = float(i) if cb else k1
        v1 = vb if cb else v1
    # −1: no coordinate re-rounded (in a non-finite row c1 is never taken, d1 being NaN too)
    k0 = k0 if odd0 and e == e else -1.0
    k1 = k1 if odd1 and e == e else -1.0
    s0 = 1.0 if v0 >= 0 else -1.0
    s1 = 1.0 if v1 >= 0 else -1.0
    d0 = 0.0
    d1 = 0.0
    for i in range(8):
        xi = x[xo + np.uint64(i) * xs]
        a, b = _coset_coords(xi, i, k0, s0, k1, s1)
        v = xi - a
        w = xi - b
        if i == 0:
            d0 = v * v
            d1 = w * w
        else:
            d0 = d0 + v * v
            d1 = d1 + w * w
    take1 = d1 < d0
    for i in range(8):
        a, b = _coset_coords(x[xo + np.uint64(i) * xs], i, k0, s0, k1, s1)
        out[oo + np.uint64(i) * os] = b if take1 else a


@nb.njit(**_HELPER)
def _e8(x, out, t0):
    """Closest E8 point of one 8-block x into out (t0: unused scratch, kept for the callers)."""
    one = np.uint64(1)
    _e8_at(x, np.uint64(0), one, out, np.uint64(0), one)


@nb.njit(**_HELPER)
def _closest(code, x, out, t0, t1):
    """Closest lattice point of one 8-block x into out; t0, t1 are length-8 scratch arrays."""
    if code == 0:
        _e8(x, out, t0)
    elif code == 1:
        _dn(x, out, 0, 4)
        _dn(x, out, 4, 4)
    else:
        for i in range(8):
            out[i] = np.floor(x[i] + 0.5)


@nb.njit(cache=_CACHE)
def _e8_rows(x, out, lo, hi, xs, os):
    """Closest E8 points of the blocks lo..hi-1 of x into out (xs, os: scratch of 8·_TILE).

    Tiles of _TILE blocks are transposed to structure-of-arrays scratch (coordinate i of block
    j at i·_TILE + j), so that the branch-free :func:`_e8_at` vectorises across blocks.
    """
    tile = np.uint64(_TILE)
    for t in range(lo, hi, _TILE):
        m = min(_TILE, hi - t)
        for j in range(m):
            for i in range(8):
                xs[i * _TILE + j] = x[t + j, i]
        for j in range(np.uint64(m)):
            _e8_at(xs, j, tile, os, j, tile)
        for j in range(m):
            for i in range(8):
                out[t + j, i] = os[i * _TILE + j]


@nb.njit(parallel=True, cache=_CACHE)
def _closest_all(code, x, out):
    n = x.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    if code == 0:
        for c in nb.prange(nchunk):
            xs = np.empty(8 * _TILE)
            os = np.empty(8 * _TILE)
            _e8_rows(x, out, c * _CHUNK, min(n, (c + 1) * _CHUNK), xs, os)
        return
    for c in nb.prange(nchunk):
        t0 = np.empty(8)
        t1 = np.empty(8)
        for b in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            _closest(code, x[b], out[b], t0, t1)


def closest_kernel(x: np.ndarray, name: str = "e8") -> np.ndarray:
    """Closest lattice point of every (N, 8) block (float64), bit-identical to the numpy path."""
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, 8)
    out = np.empty_like(x)
    _closest_all(_LAT_CODE[name], x, out)
    return out


@nb.njit(**_HELPER)
def _vecmat(x, m, out):
    """out = x·m for an 8-vector and an 8×8 matrix (sums in index order)."""
    for j in range(8):
        s = 0.0
        for i in range(8):
            s += x[i] * m[i, j]
        out[j] = s


@nb.njit(**_HELPER)
def _reduce(code, g, c, q, lam2, y, t0, t1, t2):
    """y = c·G − q·Q(c·G/q) for one block of digits c (float)."""
    if code == 0:  # E8 generator: rows 2e0, e_i − e_{i−1} (i = 1..6), ½·1 (exact arithmetic)
        h = 0.5 * c[7]
        lam2[0] = 2.0 * c[0] - c[1] + h
        for j in range(1, 6):
            lam2[j] = c[j] - c[j + 1] + h
        lam2[6] = c[6] + h
        lam2[7] = h
    else:
        _vecmat(c, g, lam2)
    for j in range(8):
        t2[j] = lam2[j] / q
    _closest(code, t2, y, t0, t1)
    for j in range(8):
        y[j] = lam2[j] - q * y[j]


@nb.njit(**_HELPER)
def _max_relevant(code, p, v):
    """max_v ⟨p, v⟩ over the Voronoi-relevant vectors; v receives the maximiser (see numpy ref)."""
    for i in range(8):
        v[i] = 0.0
    if code == 2:
        i1 = 0
        best = abs(p[0])
        for i in range(1, 8):
            a = abs(p[i])
            if a > best:
                best = a
                i1 = i
        v[i1] = -1.0 if p[i1] < 0 else 1.0
        return best
    if code == 1:
        s_best = 0.0
        j1 = 0
        j2 = 0
        for off in (0, 4):
            i1 = off
            b1 = abs(p[off])
            for i in range(off + 1, off + 4):
                a = abs(p[i])
                if a > b1:
                    b1 = a
                    i1 = i
            i2 = off
            b2 = -1.0
            for i in range(off, off + 4):
                a = abs(p[i])
                if i != i1 and a > b2:
                    b2 = a
                    i2 = i
            sh = b1 + b2
            if off == 0 or sh > s_best:
                s_best = sh
                j1 = i1
                j2 = i2
        v[j1] = -1.0 if p[j1] < 0 else 1.0
        v[j2] = -1.0 if p[j2] < 0 else 1.0
        return s_best
    i1 = 0
    b1 = abs(p[0])
    m = 0
    bm = b1
    tot = b1
    neg = 1 if p[0] < 0 else 0
    for i in range(1, 8):
        a = abs(p[i])
        if a > b1:
            b1 = a
            i1 = i
        if a < bm:
            bm = a
            m = i
        tot = tot + a
        if p[i] < 0:
            neg += 1
    i2 = 0
    b2 = -1.0
    for i in range(8):
        a = abs(p[i])
        if i != i1 and a > b2:
            b2 = a
            i2 = i
    s1 = b1 + b2
    odd = (neg & 1) == 1
    s2 = 0.5 * tot - (bm if odd else 0.0)
    if s2 > s1:
        for i in range(8):
            v[i] = -0.5 if p[i] < 0 else 0.5
        if odd:
            v[m] = -v[m]
        return s2
    v[i1] = -1.0 if p[i1] < 0 else 1.0
    v[i2] = -1.0 if p[i2] < 0 else 1.0
    return s1


@nb.njit(**_HELPER)
def _sq_err(z, beta, y, u):
    """Σ (z_i − β(y_i + u_i))², left to right."""
    w = z[0] - beta * (y[0] + u[0])
    err = w * w
    for i in range(1, 8):
        w = z[i] - beta * (y[i] + u[i])
        err = err + w * w
    return err


@nb.njit(**_HELPER)
def _relevant_max_exact(code, x, xo, xs):
    """max_v ⟨λ, v⟩ for a lattice point λ = x[xo + i·xs], branch-free.

    On lattice points every partial sum is exact, so the value equals :func:`_max_relevant`'s
    whatever the order; only its comparison with q‖v‖²/2 is used.
    """
    if code == 2:
        m1 = 0.0
        for i in range(8):
            m1 = max(m1, abs(x[xo + np.uint64(i) * xs]))
        return m1
    if code == 1:
        best = 0.0
        for h in range(2):
            m1 = -1.0
            m2 = -1.0
            for i in range(4 * h, 4 * h + 4):
                a = abs(x[xo + np.uint64(i) * xs])
                m2 = max(m2, min(m1, a))
                m1 = max(m1, a)
            best = max(best, m1 + m2)
        return best
    m1 = -1.0
    m2 = -1.0
    mn = np.inf
    tot = 0.0
    neg = 0
    for i in range(8):
        xi = x[xo + np.uint64(i) * xs]
        a = abs(xi)
        m2 = max(m2, min(m1, a))
        m1 = max(m1, a)
        mn = min(mn, a)
        tot += a
        neg += 1 if xi < 0 else 0
    s2 = 0.5 * tot - (mn if (neg & 1) == 1 else 0.0)
    return max(m1 + m2, s2)


@nb.njit(**_HELPER)
def _is_codeword(code, lam, qf, bound, g, ginv, c, lam2, y, t0, t1, t2):
    """λ (a lattice point) is a codeword: the test of :func:`_membership`, without filling y."""
    s = _relevant_max_exact(code, lam, np.uint64(0), np.uint64(1))
    if s < bound:
        return True
    if s > bound:
        return False
    _digits(code, lam, ginv, qf, c)
    _reduce(code, g, c, qf, lam2, y, t0, t1, t2)
    for i in range(8):
        if y[i] != lam[i]:
            return False
    return True


@nb.njit(**_HELPER)
def _search(code, zb, ub, t, s0, v0, beta, qf, bound, vn2, margins, steps, g, ginv, s8, yb):
    """Best in-code projection of t (or the origin) into yb; returns its error.

    ``s0``, ``v0`` are ``max_v ⟨t, v⟩`` and its maximiser, the first step of every margin.
    """
    p, cand, c, lam2, y, v, t0, t1, t2 = s8
    best_c = np.inf
    for i in range(8):
        yb[i] = 0.0
    for mi in range(margins.shape[0]):
        r = bound - margins[mi]
        for i in range(8):
            p[i] = t[i]
        for st in range(steps):
            if st == 0:
                s = s0
                for i in range(8):
                    v[i] = v0[i]
            else:
                s = _max_relevant(code, p, v)
            if s > r:
                cc = (s - r) / vn2
                for i in range(8):
                    p[i] = p[i] - cc * v[i]
        _closest(code, p, cand, t0, t1)
        if _is_codeword(code, cand, qf, bound, g, ginv, c, lam2, y, t0, t1, t2):
            e = _sq_err(zb, beta, cand, ub)
            if e < best_c:
                best_c = e
                for i in range(8):
                    yb[i] = cand[i]
    if best_c == np.inf:
        best_c = _sq_err(zb, beta, yb, ub)
    return best_c


#: Relative margin of the pruning bounds (they are exact in real arithmetic; this absorbs rounding).
_PRUNE = 1.0 + 1e-9


@nb.njit(**_HELPER)
def _tile_nearest(code, z, u, lo, m, betas, zs, us, ts, lams, e0s, ss, blk, out8, t0, t1):
    """Phase one of the encoder on blocks lo..lo+m−1, structure of arrays (vectorised for E8).

    For every β_j: t = z/β_j − u, λ_j = Q_Λ(t) (into lams[j]), the error e0 of β_j·(λ_j + u)
    (left-to-right sum, as the reference) and max_v⟨λ_j, v⟩ (into ss[j]).
    """
    tile = np.uint64(_TILE)
    k = betas.shape[0]
    for bb in range(m):
        for i in range(8):
            zs[i * _TILE + bb] = z[lo + bb, i]
            us[i * _TILE + bb] = u[lo + bb, i]
    for j in range(k):
        beta = betas[j]
        lj = lams[j]
        for i in range(8):
            for bb in range(m):
                ts[i * _TILE + bb] = zs[i * _TILE + bb] / beta - us[i * _TILE + bb]
        if code == 0:
            for bb in range(np.uint64(m)):
                _e8_at(ts, bb, tile, lj, bb, tile)
        else:
            for bb in range(m):
                for i in range(8):
                    blk[i] = ts[i * _TILE + bb]
                _closest(code, blk, out8, t0, t1)
                for i in range(8):
                    lj[i * _TILE + bb] = out8[i]
        ej = e0s[j]
        for bb in range(m):
            w = zs[bb] - beta * (lj[bb] + us[bb])
            ej[bb] = w * w
        for i in range(1, 8):
            for bb in range(m):
                w = zs[i * _TILE + bb] - beta * (lj[i * _TILE + bb] + us[i * _TILE + bb])
                ej[bb] = ej[bb] + w * w
        sj = ss[j]
        for bb in range(np.uint64(m)):
            sj[bb] = _relevant_max_exact(code, lj, bb, tile)


@nb.njit(parallel=True, cache=_CACHE)
def _encode_all(
    code,
    z,
    qs,
    betas,
    u,
    least_error,
    vn2,
    margins,
    steps,
    search,
    g,
    ginv,
    digits,
    chosen,
    est,
    over,
    error,
):
    """Per block: every β, its codeword (nearest lattice point, else projection / wrapped point),
    and the selection rule.

    Tiles of _TILE blocks: first the nearest lattice point, its error and its
    ``max_v⟨λ, v⟩`` for every β (:func:`_tile_nearest`, vectorised), then per block the
    membership test, the search where λ overloads, and the rule. With the least-error rule the
    scales are visited from the largest down, so that two bounds can skip work that cannot change
    the choice (ties still go to the smallest index): the error of the nearest lattice point,
    below which no codeword at that β can be, and ``β²·(max_v⟨t, v⟩ − q‖v‖²/2)²/‖v‖²``, the
    squared distance from t to the cell qV. ``qs`` holds the code size q_j of every scale.
    """
    n = z.shape[0]
    k = betas.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    for ch in nb.prange(nchunk):
        zs = np.empty(8 * _TILE)
        us = np.empty(8 * _TILE)
        ts = np.empty(8 * _TILE)
        lams = np.empty((k, 8 * _TILE))
        e0s = np.empty((k, _TILE))
        ss = np.empty((k, _TILE))
        t = np.empty(8)
        lam = np.empty(8)
        ysel = np.empty(8)
        c = np.empty(8)
        lam2 = np.empty(8)
        y = np.empty(8)
        v = np.empty(8)
        t0 = np.empty(8)
        t1 = np.empty(8)
        t2 = np.empty(8)
        s8 = (
            np.empty(8),
            np.empty(8),
            np.empty(8),
            np.empty(8),
            np.empty(8),
            np.empty(8),
            np.empty(8),
            np.empty(8),
            np.empty(8),
        )
        end = min(n, (ch + 1) * _CHUNK)
        for lo in range(ch * _CHUNK, end, _TILE):
            m = min(_TILE, end - lo)
            _tile_nearest(code, z, u, lo, m, betas, zs, us, ts, lams, e0s, ss, t, lam, t0, t1)
            for bb in range(m):
                b = lo + bb
                zb = z[b]
                ub = u[b]
                best = np.inf
                sel = -1
                sel_table = True  # the chosen codeword is the nearest point in lams[sel]
                for jj in range(k):
                    j = k - 1 - jj if least_error else jj
                    beta = betas[j]
                    qf = qs[j]
                    bound = 0.5 * qf * vn2
                    err = e0s[j, bb]
                    if least_error and err > best * _PRUNE:
                        continue
                    s = ss[j, bb]
                    mm = 0
                    if s > bound:
                        mm = 1
                    elif s == bound:
                        for i in range(8):
                            lam[i] = lams[j, i * _TILE + bb]
                        _digits(code, lam, ginv, qf, c)
                        _reduce(code, g, c, qf, lam2, y, t0, t1, t2)
                        for i in range(8):
                            if y[i] != lam[i]:
                                mm = 2
                    ov = mm != 0
                    if not least_error and ov and j < k - 1:
                        continue  # no-overload: a later β will be taken
                    if ov:
                        for i in range(8):
                            t[i] = zb[i] / beta - ub[i]
                        if search:
                            s0 = _max_relevant(code, t, v)
                            st = s0 - bound
                            if (
                                least_error
                                and st > 0
                                and beta * beta * st * st / vn2 > best * _PRUNE
                            ):
                                continue
                            err = _search(
                                code,
                                zb,
                                ub,
                                t,
                                s0,
                                v,
                                beta,
                                qf,
                                bound,
                                vn2,
                                margins,
                                steps,
                                g,
                                ginv,
                                s8,
                                y,
                            )
                        else:
                            if mm == 1:
                                for i in range(8):
                                    lam[i] = lams[j, i * _TILE + bb]
                                _digits(code, lam, ginv, qf, c)
                                _reduce(code, g, c, qf, lam2, y, t0, t1, t2)
                            err = _sq_err(zb, beta, y, ub)
                    if (not least_error) or err < best or (err == best and j < sel):
                        best = err
                        sel = j
                        sel_table = not ov
                        if ov:
                            for i in range(8):
                                ysel[i] = y[i]
                        over[b] = ov
                        if not least_error:
                            break
                if sel_table:
                    for i in range(8):
                        ysel[i] = lams[sel, i * _TILE + bb]
                chosen[b] = sel
                error[b] = best
                beta = betas[sel]
                for i in range(8):
                    est[b, i] = beta * (ysel[i] + ub[i])
                _digits(code, ysel, ginv, qs[sel], c)
                for i in range(8):
                    digits[b, i] = np.int64(c[i])


@nb.njit(**_HELPER)
def _digits(code, lam, ginv, qf, c):
    """c = λ·G⁻¹ mod q (exact: small integers and halves, so any summation order agrees).

    For E8 the generator's back-substitution: c₇ = 2λ₇, c₆ = λ₆ − λ₇, c_j = λ_j − λ₇ + c_{j+1}
    (j = 5..1), c₀ = (λ₀ − λ₇ + c₁)/2.
    """
    if code == 0:
        h = lam[7]
        c[7] = 2.0 * h
        c[6] = lam[6] - h
        for j in range(5, 0, -1):
            c[j] = lam[j] - h + c[j + 1]
        c[0] = 0.5 * (lam[0] - h + c[1])
    else:
        _vecmat(lam, ginv, c)
    for jj in range(8):
        c[jj] = c[jj] - qf * np.floor(c[jj] / qf)


def voronoi_encode_kernel(z, name, qs, betas, u, rule, search=True):
    """Numba version of :func:`mmquant.lattices.voronoi.voronoi_encode_blocks` (same outputs).

    ``qs`` holds the code size of every scale (one per β).
    """
    lat = lattice(name)
    z = np.ascontiguousarray(z, dtype=np.float64)
    n = z.shape[0]
    digits = np.zeros((n, 8), np.int64)
    chosen = np.full(n, -1, np.int64)
    est = np.zeros((n, 8))
    over = np.ones(n, np.bool_)
    error = np.empty(n)
    _encode_all(
        _LAT_CODE[name],
        z,
        np.ascontiguousarray(qs, dtype=np.float64),
        np.ascontiguousarray(betas, dtype=np.float64),
        np.ascontiguousarray(u, dtype=np.float64),
        rule == "least-error",
        lat.relevant_norm_sq,
        np.asarray(PROJECT_MARGINS, dtype=np.float64),
        PROJECT_STEPS,
        bool(search),
        np.array(lat.generator),  # a writable copy: one compiled specialisation
        np.array(lat.generator_inverse),
        digits,
        chosen,
        est,
        over,
        error,
    )
    return digits, chosen, est, over, error


@nb.njit(parallel=True, cache=_CACHE)
def _decode_all(code, digits, bi, qs, betas, u, g, out):
    n = digits.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    for ch in nb.prange(nchunk):
        c = np.empty(8)
        lam2 = np.empty(8)
        y = np.empty(8)
        t0 = np.empty(8)
        t1 = np.empty(8)
        t2 = np.empty(8)
        for b in range(ch * _CHUNK, min(n, (ch + 1) * _CHUNK)):
            for i in range(8):
                c[i] = float(digits[b, i])
            _reduce(code, g, c, qs[bi[b]], lam2, y, t0, t1, t2)
            beta = betas[bi[b]]
            for i in range(8):
                out[b, i] = beta * (y[i] + u[b, i])


def voronoi_decode_kernel(digits, beta_index, name, qs, betas, u):
    """Numba version of :func:`mmquant.lattices.voronoi.voronoi_decode_blocks` (one q per β)."""
    lat = lattice(name)
    d = np.ascontiguousarray(digits, dtype=np.int64)
    out = np.empty(d.shape)
    _decode_all(
        _LAT_CODE[name],
        d,
        np.ascontiguousarray(beta_index, dtype=np.int64),
        np.ascontiguousarray(qs, dtype=np.float64),
        np.ascontiguousarray(betas, dtype=np.float64),
        np.ascontiguousarray(u, dtype=np.float64),
        np.array(lat.generator),  # a writable copy: one compiled specialisation
        out,
    )
    return out


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
