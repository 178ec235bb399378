"""Numba kernels for the E8 / D4 / Z⁸ closest point and the Voronoi code (imported lazily).

Each kernel performs exactly the floating-point operations of the numpy reference in
:mod:`mmquant.lattices.closest` and :mod:`mmquant.lattices.voronoi`, in the same order (sums of
squares left to right, first index on ties), so the results are bit-identical (tests check).
Blocks are processed in parallel (``numba.prange``) in chunks, with per-chunk scratch buffers.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from mmquant.lattices.closest import lattice

__all__ = ["closest_kernel", "voronoi_encode_kernel", "voronoi_decode_kernel"]

_LAT_CODE = {"e8": 0, "d4": 1, "zn": 2}
_CHUNK = 1024


@nb.njit(inline="always", cache=True)
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


@nb.njit(inline="always", cache=True)
def _e8(x, out, t0):
    """Closest E8 point of one 8-block: both cosets in one pass (t0: scratch of length 8)."""
    p0 = 0
    p1 = 0
    k0 = 0
    k1 = 0
    m0 = -1.0
    m1 = -1.0
    for i in range(8):
        xi = x[i]
        a = np.floor(xi + 0.5)
        b = np.floor(xi) + 0.5
        t0[i] = a
        out[i] = b
        p0 += np.int64(a) & 1
        p1 += np.int64(b - 0.5) & 1
        da = abs(xi - a)
        db = abs(xi - b)
        if da > m0:
            m0 = da
            k0 = i
        if db > m1:
            m1 = db
            k1 = i
    if p0 & 1:
        if x[k0] - t0[k0] >= 0:
            t0[k0] += 1.0
        else:
            t0[k0] -= 1.0
    if p1 & 1:
        if x[k1] - out[k1] >= 0:
            out[k1] += 1.0
        else:
            out[k1] -= 1.0
    v = x[0] - t0[0]
    d0 = v * v
    v = x[0] - out[0]
    d1 = v * v
    for i in range(1, 8):
        v = x[i] - t0[i]
        d0 = d0 + v * v
        v = x[i] - out[i]
        d1 = d1 + v * v
    if not d1 < d0:
        for i in range(8):
            out[i] = t0[i]


@nb.njit(inline="always", cache=True)
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


@nb.njit(parallel=True, cache=True)
def _closest_all(code, x, out):
    n = x.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
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


@nb.njit(inline="always", cache=True)
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
        for j in range(8):
            s = 0.0
            for i in range(8):
                s += c[i] * g[i, j]
            lam2[j] = s
    for j in range(8):
        t2[j] = lam2[j] / q
    _closest(code, t2, y, t0, t1)
    for j in range(8):
        y[j] = lam2[j] - q * y[j]


@nb.njit(parallel=True, cache=True)
def _encode_all(code, z, q, betas, u, least_error, rho2, g, ginv, digits, chosen, est, over):
    n = z.shape[0]
    k = betas.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    qf = float(q)
    ball = rho2 * qf * qf
    for ch in nb.prange(nchunk):
        t = np.empty(8)
        lam = np.empty(8)
        best_lam = np.empty(8)
        c = np.empty(8)
        lam2 = np.empty(8)
        y = np.empty(8)
        xh = np.empty(8)
        t0 = np.empty(8)
        t1 = np.empty(8)
        t2 = np.empty(8)
        for b in range(ch * _CHUNK, min(n, (ch + 1) * _CHUNK)):
            best = np.inf
            sel = -1
            for j in range(k):
                beta = betas[j]
                for i in range(8):
                    t[i] = z[b, i] / beta - u[b, i]
                _closest(code, t, lam, t0, t1)
                nrm = lam[0] * lam[0]
                for i in range(1, 8):
                    nrm = nrm + lam[i] * lam[i]
                ov = False
                if nrm < ball:
                    for i in range(8):
                        y[i] = lam[i]
                else:
                    _digits(lam, ginv, qf, c)
                    _reduce(code, g, c, qf, lam2, y, t0, t1, t2)
                    for i in range(8):
                        if y[i] != lam[i]:
                            ov = True
                for i in range(8):
                    xh[i] = beta * (y[i] + u[b, i])
                v = z[b, 0] - xh[0]
                err = v * v
                for i in range(1, 8):
                    v = z[b, i] - xh[i]
                    err = err + v * v
                if least_error:
                    take = err < best
                else:
                    take = sel < 0 and ((not ov) or j == k - 1)
                if take:
                    best = err
                    sel = j
                    for i in range(8):
                        best_lam[i] = lam[i]
                        est[b, i] = xh[i]
                    over[b] = ov
            chosen[b] = sel
            _digits(best_lam, ginv, qf, c)
            for i in range(8):
                digits[b, i] = np.int64(c[i])


@nb.njit(inline="always", cache=True)
def _digits(lam, ginv, qf, c):
    """c = λ·G⁻¹ mod q (exact: small integers and halves)."""
    for jj in range(8):
        s = 0.0
        for i in range(8):
            s += lam[i] * ginv[i, jj]
        c[jj] = s - qf * np.floor(s / qf)


def voronoi_encode_kernel(z, name, q, betas, u, rule):
    """Numba version of :func:`mmquant.lattices.voronoi.voronoi_encode_blocks` (same outputs)."""
    lat = lattice(name)
    z = np.ascontiguousarray(z, dtype=np.float64)
    n = z.shape[0]
    digits = np.zeros((n, 8), np.int64)
    chosen = np.full(n, -1, np.int64)
    est = np.zeros((n, 8))
    over = np.ones(n, np.bool_)
    _encode_all(
        _LAT_CODE[name],
        z,
        int(q),
        np.ascontiguousarray(betas, dtype=np.float64),
        np.ascontiguousarray(u, dtype=np.float64),
        rule == "least-error",
        lat.packing_radius_sq,
        np.ascontiguousarray(lat.generator),
        np.ascontiguousarray(lat.generator_inverse),
        digits,
        chosen,
        est,
        over,
    )
    return digits, chosen, est, over


@nb.njit(parallel=True, cache=True)
def _decode_all(code, digits, bi, q, betas, u, g, out):
    n = digits.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    qf = float(q)
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
            _reduce(code, g, c, qf, lam2, y, t0, t1, t2)
            beta = betas[bi[b]]
            for i in range(8):
                out[b, i] = beta * (y[i] + u[b, i])


def voronoi_decode_kernel(digits, beta_index, name, q, betas, u):
    """Numba version of :func:`mmquant.lattices.voronoi.voronoi_decode_blocks`."""
    lat = lattice(name)
    d = np.ascontiguousarray(digits, dtype=np.int64)
    out = np.empty(d.shape)
    _decode_all(
        _LAT_CODE[name],
        d,
        np.ascontiguousarray(beta_index, dtype=np.int64),
        int(q),
        np.ascontiguousarray(betas, dtype=np.float64),
        np.ascontiguousarray(u, dtype=np.float64),
        np.ascontiguousarray(lat.generator),
        out,
    )
    return out
