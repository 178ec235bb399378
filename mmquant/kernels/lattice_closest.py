"""Numba kernels of lattice geometry: the E8 / D4 / Z⁸ closest point, the Voronoi-relevant vectors.

Each kernel performs exactly the floating-point operations of the numpy reference in
:mod:`mmquant.lattices.closest`, in the same order (sums of squares left to right, first index on
ties), so the results are bit-identical (tests check). Blocks are processed in parallel
(``numba.prange``) in chunks, with per-chunk scratch buffers. The E8 closest point is branch-free
(selects, unsigned indices) and runs on tiles of blocks transposed to structure-of-arrays
scratch, so that LLVM vectorises it across blocks. The helpers here (closest point of one block,
largest relevant inner product) are also those of the Voronoi code kernels
(:mod:`mmquant.kernels.lattice_block`). A lattice is named by its code in :data:`LAT_CODE`; the
kernels import nothing from :mod:`mmquant.lattices` (what they need of a lattice is passed in).

Compilation: the helpers are compiled once each and inlined by LLVM (``forceinline=True``), not
copied into their callers by numba (``inline="always"``, whose cost grows with every copy: the
encoder took about 3 CPU-minutes to compile that way, 13 s this way, for the same machine code
speed). They are compiled without reference counting (``_nrt=False``): they only read and write
arrays their caller owns and allocate none, and atomic reference-count updates left at every
call would otherwise slow the inner loops down by half. Only the kernels a run calls are
compiled (numba compiles on the first call), and cached on disk where possible
(:func:`mmquant.kernels.numba_cache`). numba's cache checks the source file of the cached kernel
only: after editing the helpers here, clear the ``__pycache__`` cache of
:mod:`~mmquant.kernels.lattice_block` too (or its kernels keep the old helpers).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from mmquant.kernels import numba_cache

__all__ = ["LAT_CODE", "closest_kernel"]

#: Kernel code of each lattice (the branch the helpers take): E8, D4 ⊕ D4, Z⁸.
LAT_CODE = {"e8": 0, "d4": 1, "zn": 2}
_CHUNK = 1024  # blocks per parallel step
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
    _closest_all(LAT_CODE[name], x, out)
    return out


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
