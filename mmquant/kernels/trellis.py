"""Numba kernels of the bitshift trellis (mmquant.trellis): Viterbi search and decoders.

Bit-exact with the numpy reference :mod:`mmquant.trellis.viterbi` (tests check it): the same
float32 operations in the same order (group minimum with the first-minimum tie rule, subtraction
of the minimum, the squared errors accumulated over the V entries of a step), without fastmath.
Rows run in parallel (``prange`` over workers, each with its own buffers, taking every
``workers``-th row).

A step is written for LLVM's vectoriser (checked with ``inspect_asm``: AVX-512/AVX2 min, compare
and blend on the float32 runs): the group minimum over contiguous slices of the path metrics (the
back-pointer is a select of the byte ``j`` on the strict ``<``, so the first minimum wins, as in
the reference), taken in blocks of :data:`_BLOCK` groups so the running minima stay in L1; the
expansion ``D'[s] = (m[s >> kV] − min) + cost(s)`` with a constant inner count for ``2^kV ≤ 8``
(slices otherwise). About 0.2–0.3 ns per state and step on one core of the development machine
(``L = 12``: 1.2 M entries/s per core; ``L = 16``: 55–78 k entries/s per core).

Memory per worker: the path metrics (2 · 2^L float32), one byte of back-pointer per group and step
for at most ``BP_BUDGET`` bytes, and, when a row needs more steps than that holds, checkpoints of
the path metrics every ``C = BP_BUDGET / 2^(L−kV)`` steps: the forward pass then keeps only the
checkpoints, and the traceback recomputes each segment's back-pointers from its checkpoint (last
segment first), twice the forward work for such long rows, with the same result.

Importing this module compiles nothing; the first call compiles (cached on disk when possible).
Raises ImportError without numba.
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import numba_cache
from mmquant.trellis.viterbi import junction_steps

__all__ = [
    "BP_BUDGET",
    "decode_ec",
    "decode_fixed",
    "viterbi_ec",
    "viterbi_fixed",
    "viterbi_rd",
]

#: Bytes of back-pointers a worker keeps for one row before it switches to checkpoints.
BP_BUDGET = 1 << 26

_CACHE = numba_cache()
_F32 = np.float32


#: Groups whose minimum is taken together (their m and back-pointers stay in the L1 cache over
#: the 2^kV runs).
_BLOCK = 2048


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _group_min(d, m, bpt, G, P):  # pragma: no cover
    """m[g] = min_j d[j·G + g], bpt[g] = the first such j (uint8); returns min_g m[g].

    In blocks of :data:`_BLOCK` groups. The runs ``d[j·G + b0 : j·G + b1]`` are taken as slices:
    indexing ``d[j·G + g]`` directly makes numba wrap negative indices, which stops LLVM from
    vectorising the loop. The minimum over the groups is taken in 16 lanes (exact in any
    order)."""
    acc = np.empty(16, np.float32)
    mn = d[0]
    for b0 in range(0, G, _BLOCK):
        b1 = min(G, b0 + _BLOCK)
        n = b1 - b0
        mb = m[b0:b1]
        bb = bpt[b0:b1]
        d0 = d[b0:b1]
        for g in range(n):
            mb[g] = d0[g]
            bb[g] = 0
        for j in range(1, P):
            jj = np.uint8(j)
            dj = d[j * G + b0 : j * G + b1]
            for g in range(n):
                v = dj[g]
                mg = mb[g]
                lt = v < mg
                bb[g] = jj if lt else bb[g]
                mb[g] = v if lt else mg
        n16 = n // 16
        if n16 > 0:
            acc[:] = mb[:16]
            for i in range(1, n16):
                mi = mb[i * 16 : (i + 1) * 16]
                for lane in range(16):
                    v = mi[lane]
                    a = acc[lane]
                    acc[lane] = v if v < a else a
            for lane in range(16):
                v = acc[lane]
                mn = v if v < mn else mn
        for g in range(n16 * 16, n):
            v = mb[g]
            mn = v if v < mn else mn
    return mn


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _expand(m, mn, x0, x1, t0, t1, V, dn, G, P):  # pragma: no cover
    """dn[s] = (m[s >> kV] − mn) + Σ_v (x_v − t_v[s])², s = g·P + p (P = 2^kV): loops with a constant
    inner count for P ≤ 8 (LLVM vectorises them; P = 16 so written is slower), slices otherwise."""
    if V == 1:
        if P == 2:
            for g in range(G):
                mg = m[g] - mn
                for p in range(2):
                    e = x0 - t0[g * 2 + p]
                    dn[g * 2 + p] = mg + e * e
        elif P == 4:
            for g in range(G):
                mg = m[g] - mn
                for p in range(4):
                    e = x0 - t0[g * 4 + p]
                    dn[g * 4 + p] = mg + e * e
        elif P == 8:
            for g in range(G):
                mg = m[g] - mn
                for p in range(8):
                    e = x0 - t0[g * 8 + p]
                    dn[g * 8 + p] = mg + e * e
        else:
            for g in range(G):
                mg = m[g] - mn
                tb = t0[g * P : (g + 1) * P]
                db = dn[g * P : (g + 1) * P]
                for p in range(P):
                    e = x0 - tb[p]
                    db[p] = mg + e * e
    else:
        if P == 4:
            for g in range(G):
                mg = m[g] - mn
                for p in range(4):
                    e = x0 - t0[g * 4 + p]
                    c = e * e
                    e = x1 - t1[g * 4 + p]
                    dn[g * 4 + p] = mg + (c + e * e)
        elif P == 8:
            for g in range(G):
                mg = m[g] - mn
                for p in range(8):
                    e = x0 - t0[g * 8 + p]
                    c = e * e
                    e = x1 - t1[g * 8 + p]
                    dn[g * 8 + p] = mg + (c + e * e)
        else:
            for g in range(G):
                mg = m[g] - mn
                tb0 = t0[g * P : (g + 1) * P]
                tb1 = t1[g * P : (g + 1) * P]
                db = dn[g * P : (g + 1) * P]
                for p in range(P):
                    e = x0 - tb0[p]
                    c = e * e
                    e = x1 - tb1[p]
                    db[p] = mg + (c + e * e)


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _step(x, off, V, L, kV, d, dn, m, bpt, mode, table, labels, dl, inv, cv):  # pragma: no cover
    P = 1 << kV
    G = 1 << (L - kV)
    N = 1 << L
    mn = _group_min(d, m, bpt, G, P)
    x0 = x[off]
    if mode == 0:
        if V == 1:
            _expand(m, mn, x0, x0, table[0], table[0], 1, dn, G, P)
        else:
            _expand(m, mn, x0, x[off + 1], table[0], table[1], 2, dn, G, P)
    else:
        for g in range(G):
            m[g] = m[g] - mn
        y = x0 * inv
        for c in range(4):
            cf = _F32(c)
            i = cf + _F32(4.0) * np.rint((y - cf) * _F32(0.25))
            e = x0 - dl * i
            cv[c] = e * e
        for s in range(N):
            dn[s] = m[s >> kV] + cv[labels[s]]


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _first_min(d, start, stride, count):  # pragma: no cover
    best = start
    bv = d[start]
    for j in range(1, count):
        i = start + j * stride
        if d[i] < bv:
            bv = d[i]
            best = i
    return best


@numba.njit(cache=_CACHE, fastmath=False, nogil=True)
def _search(
    x, S, V, L, kV, o, d, dn, m, bp, ck, mode, table, labels, dl, inv, cv, u
):  # pragma: no cover
    """Viterbi over the S steps of row ``x`` from metrics ``d``; ends in the best state ``j·G + o``
    (any state if ``o < 0``); writes the symbols into ``u``."""
    P = 1 << kV
    G = 1 << (L - kV)
    C = bp.shape[0]
    nseg = (S + C - 1) // C
    for t in range(S):
        if nseg > 1 and t % C == 0:
            ck[t // C, :] = d
        _step(x, t * V, V, L, kV, d, dn, m, bp[t % C], mode, table, labels, dl, inv, cv)
        d, dn = dn, d
    if o >= 0:
        s = _first_min(d, o, G, P)
    else:
        s = _first_min(d, 0, 1, 1 << L)
    shift = L - kV
    for seg in range(nseg - 1, -1, -1):
        t0 = seg * C
        t1 = min(S, t0 + C)
        if nseg > 1:
            d[:] = ck[seg]
            for t in range(t0, t1):
                _step(x, t * V, V, L, kV, d, dn, m, bp[t - t0], mode, table, labels, dl, inv, cv)
                d, dn = dn, d
        for t in range(t1 - 1, t0 - 1, -1):
            u[t] = s & (P - 1)
            g = s >> kV
            s = (np.int64(bp[t - t0, g]) << shift) | g


@numba.njit(cache=_CACHE, fastmath=False, nogil=True, parallel=True)
def _fixed(z, table, L, kV, h, budget, nw, u):  # pragma: no cover
    R, T = z.shape
    V = table.shape[0]
    S = T // V
    N = 1 << L
    G = 1 << (L - kV)
    C = max(1, min(S, budget // G))
    rows_bp = max(C, 2 * h)
    nseg = (S + C - 1) // C
    labels = np.zeros(1, np.uint8)
    for w in numba.prange(nw):
        d = np.empty(N, np.float32)
        dn = np.empty(N, np.float32)
        m = np.empty(G, np.float32)
        bp = np.empty((rows_bp, G), np.uint8)
        ck = np.empty((nseg if nseg > 1 else 0, N), np.float32)
        cv = np.empty(4, np.float32)
        xs = np.empty(2 * h * V, np.float32)
        u1 = np.empty(2 * h, np.uint8)
        for r in range(w, R, nw):
            x = z[r]
            o = 0
            if h > 0:  # the junction pass: the last h steps, then the first h steps
                for t in range(h):
                    for v in range(V):
                        xs[t * V + v] = x[(S - h + t) * V + v]
                        xs[(h + t) * V + v] = x[t * V + v]
                d[:] = 0.0
                _search(
                    xs,
                    2 * h,
                    V,
                    L,
                    kV,
                    -1,
                    d,
                    dn,
                    m,
                    bp[: 2 * h],
                    ck,
                    0,
                    table,
                    labels,
                    _F32(1.0),
                    _F32(1.0),
                    cv,
                    u1,
                )
                s = 0
                for t in range(h):  # the state after step h−1: its last ⌈L/kV⌉ symbols
                    s = ((s << kV) | np.int64(u1[t])) & (N - 1)
                o = s & (G - 1)
            d[:] = np.inf
            for j in range(1 << kV):
                d[j * G + o] = 0.0
            _search(
                x,
                S,
                V,
                L,
                kV,
                o,
                d,
                dn,
                m,
                bp[:C],
                ck,
                0,
                table,
                labels,
                _F32(1.0),
                _F32(1.0),
                cv,
                u[r],
            )


@numba.njit(cache=_CACHE, fastmath=False, nogil=True, parallel=True)
def _ec(z, labels, dl, inv, W, budget, nw, u):  # pragma: no cover
    R, T = z.shape
    N = 1 << W
    G = 1 << (W - 1)
    C = max(1, min(T, budget // G))
    nseg = (T + C - 1) // C
    table = np.zeros((1, 1), np.float32)
    for w in numba.prange(nw):
        d = np.empty(N, np.float32)
        dn = np.empty(N, np.float32)
        m = np.empty(G, np.float32)
        bp = np.empty((C, G), np.uint8)
        ck = np.empty((nseg if nseg > 1 else 0, N), np.float32)
        cv = np.empty(4, np.float32)
        for r in range(w, R, nw):
            d[:] = np.inf
            d[0] = 0.0
            _search(z[r], T, 1, W, 1, -1, d, dn, m, bp, ck, 1, table, labels, dl, inv, cv, u[r])


def _workers(rows: int) -> int:
    return max(1, min(rows, numba.get_num_threads()))


def viterbi_fixed(
    z: np.ndarray, table: np.ndarray, L: int, kV: int, budget: int = BP_BUDGET
) -> np.ndarray:
    """Same symbols as :func:`mmquant.trellis.viterbi.viterbi_fixed` (uint8 (R, S)).

    ``budget``: bytes of back-pointers per worker before checkpoints are used (tests lower it).
    """
    z = np.ascontiguousarray(z, np.float32)
    table = np.array(table, np.float32, order="C")  # writable: one compiled specialisation
    u = np.empty((z.shape[0], z.shape[1] // table.shape[0]), np.uint8)
    h = junction_steps(z.shape[1] // table.shape[0], int(L), int(kV))
    _fixed(z, table, int(L), int(kV), h, int(budget), _workers(z.shape[0]), u)
    return u


def viterbi_ec(
    z: np.ndarray, labels: np.ndarray, delta: float, W: int, budget: int = BP_BUDGET
) -> np.ndarray:
    """Same bits as :func:`mmquant.trellis.viterbi.viterbi_ec` (uint8 (R, T))."""
    z = np.ascontiguousarray(z, np.float32)
    dl = np.float32(delta)
    inv = np.float32(np.float32(1.0) / dl)
    u = np.empty(z.shape, np.uint8)
    _ec(
        z,
        np.array(labels, np.uint8, order="C"),
        dl,
        inv,
        int(W),
        int(budget),
        _workers(z.shape[0]),
        u,
    )
    return u


@numba.njit(cache=_CACHE, fastmath=False, nogil=True, parallel=True)
def _decode_fixed(u, table, L, kV, out):  # pragma: no cover
    R, S = u.shape
    V = table.shape[0]
    mask = (1 << L) - 1
    n0 = (L + kV - 1) // kV
    t0 = table[0]
    t1 = table[V - 1]
    for r in numba.prange(R):
        ur = u[r]
        orow = out[r]
        s = 0
        for t in range(S - n0, S):
            s = ((s << kV) | np.int64(ur[t])) & mask
        if V == 1:
            for t in range(S):
                s = ((s << kV) | np.int64(ur[t])) & mask
                orow[t] = t0[s]
        else:
            for t in range(S):
                s = ((s << kV) | np.int64(ur[t])) & mask
                orow[2 * t] = t0[s]
                orow[2 * t + 1] = t1[s]


def decode_fixed(u: np.ndarray, table: np.ndarray, L: int, kV: int) -> np.ndarray:
    """Same as :func:`mmquant.trellis.quantizer.decode_symbols` (float32 (R, S·V))."""
    u = np.ascontiguousarray(u, np.uint8)
    table = np.array(table, np.float32, order="C")
    out = np.empty((u.shape[0], u.shape[1] * table.shape[0]), np.float32)
    _decode_fixed(u, table, int(L), int(kV), out)
    return out


@numba.njit(cache=_CACHE, fastmath=False, nogil=True, parallel=True)
def _decode_ec(j, pa, pb, W, out):  # pragma: no cover
    R, T = j.shape
    mask = (1 << W) - 1
    for r in numba.prange(R):
        w = 0
        for t in range(T):
            base = (w << 1) & mask
            jt = j[r, t]
            b = pb[base]
            a = jt & 1
            out[r, t] = 2 * jt + b
            w = base | (a ^ pa[base])


def decode_ec(j: np.ndarray, pa: np.ndarray, pb: np.ndarray, W: int) -> np.ndarray:
    """Same as :func:`mmquant.trellis.entropy_coded.levels` (int64 levels (R, T))."""
    j = np.ascontiguousarray(j, np.int64)
    out = np.empty(j.shape, np.int64)
    _decode_ec(j, np.array(pa, np.int64, order="C"), np.array(pb, np.int64, order="C"), int(W), out)
    return out


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
