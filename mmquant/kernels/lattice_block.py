"""Numba kernels of the multi-scale Voronoi code: encoding (every β, search, rule) and decoding.

Each kernel performs exactly the floating-point operations of the numpy reference in
:mod:`mmquant.lattices.blockcode`, in the same order, so the results are bit-identical (tests
check). The encoder works in two phases per tile of blocks: the nearest lattice point, its error
and its largest relevant inner product for every β (vectorised for E8), then per block the
membership test, the projection search and the selection rule, with bounds that skip what cannot
be chosen. The lattice's generator, its inverse, the norm of its relevant vectors and the search
parameters are arguments (the caller passes those of :mod:`mmquant.lattices`); the geometry
helpers and the compilation settings are those of :mod:`mmquant.kernels.lattice_closest` (see
there: LLVM-inlined helpers without reference counting, compiled on first use, cached on disk).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from mmquant.kernels.lattice_closest import (
    _CACHE,
    _CHUNK,
    _HELPER,
    _TILE,
    LAT_CODE,
    _closest,
    _e8_at,
    _max_relevant,
    _relevant_max_exact,
)

__all__ = ["voronoi_encode_kernel", "voronoi_decode_kernel"]


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
def _sq_err(z, beta, y, u):
    """Σ (z_i − β(y_i + u_i))², left to right."""
    w = z[0] - beta * (y[0] + u[0])
    err = w * w
    for i in range(1, 8):
        w = z[i] - beta * (y[i] + u[i])
        err = err + w * w
    return err


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


def voronoi_encode_kernel(
    z,
    name,
    qs,
    betas,
    u,
    least_error,
    search,
    *,
    generator,
    generator_inverse,
    relevant_norm_sq,
    margins,
    steps,
):
    """Numba version of :func:`mmquant.lattices.blockcode.voronoi_encode_blocks` (same outputs).

    ``name`` is the lattice (a key of :data:`~mmquant.kernels.lattice_closest.LAT_CODE`), ``qs``
    the code size of every scale (one per β), ``least_error`` the selection rule (else
    no-overload), ``search`` the projection search; ``generator``, ``generator_inverse`` and
    ``relevant_norm_sq`` are the lattice's (:class:`mmquant.lattices.closest.Lattice`),
    ``margins`` and ``steps`` the search's targets and projections per target. Returns
    ``(digits, beta_index, estimate, overload, error)``.
    """
    z = np.ascontiguousarray(z, dtype=np.float64)
    n = z.shape[0]
    digits = np.zeros((n, 8), np.int64)
    chosen = np.full(n, -1, np.int64)
    est = np.zeros((n, 8))
    over = np.ones(n, np.bool_)
    error = np.empty(n)
    _encode_all(
        LAT_CODE[name],
        z,
        np.ascontiguousarray(qs, dtype=np.float64),
        np.ascontiguousarray(betas, dtype=np.float64),
        np.ascontiguousarray(u, dtype=np.float64),
        bool(least_error),
        float(relevant_norm_sq),
        np.array(margins, dtype=np.float64),
        int(steps),
        bool(search),
        np.array(generator, dtype=np.float64),  # a writable copy: one compiled specialisation
        np.array(generator_inverse, dtype=np.float64),
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


def voronoi_decode_kernel(digits, beta_index, name, qs, betas, u, *, generator):
    """Numba version of :func:`mmquant.lattices.blockcode.voronoi_decode_blocks`.

    ``qs`` holds the code size of every scale, ``generator`` is the lattice's.
    """
    d = np.ascontiguousarray(digits, dtype=np.int64)
    out = np.empty(d.shape)
    _decode_all(
        LAT_CODE[name],
        d,
        np.ascontiguousarray(beta_index, dtype=np.int64),
        np.ascontiguousarray(qs, dtype=np.float64),
        np.ascontiguousarray(betas, dtype=np.float64),
        np.ascontiguousarray(u, dtype=np.float64),
        np.array(generator, dtype=np.float64),  # a writable copy: one compiled specialisation
        out,
    )
    return out
