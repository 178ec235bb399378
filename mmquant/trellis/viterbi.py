"""Viterbi search of the bitshift trellis: the numpy reference (the numba kernels match it bit for bit).

The trellis has ``N = 2^L`` states; a step shifts ``kV`` new bits (the step's *symbol* ``u``) into
the state: ``s_t = ((s_{t−1} << kV) | u_t) mod 2^L``, so the state is the window of the last L
bits of the stream. The predecessors of ``s`` are the ``P = 2^kV`` states ``p = j·G + g``
(``G = 2^(L−kV)``, ``g = s >> kV`` the bits they share, ``j`` the dropped top bits), so the
minimum over predecessors is computed once per *group* ``g`` (contiguous runs of the path
metrics: the layout the kernels vectorise) and the back-pointer of a step is one byte per group
(``j``), not per state.

One step, all in float32 (the kernels do the same operations in the same order)::

    m[g]  = min_j D[j·G + g]           (first minimum: the smallest j wins a tie)
    D'[s] = (m[s >> kV] − min_g m[g]) + cost_t(s)

(subtracting the minimum keeps the path metrics small, so float32 resolves the step costs even on
long rows). ``cost_t(s)`` is, for a fixed-rate code with table ``C[v, s]``, the squared error
``Σ_v (x_{tV+v} − C[v, s])²`` accumulated over v in order; for the entropy-coded trellis
(:mod:`mmquant.trellis.entropy_coded`) it is the squared error to the nearest level of the state's
coset (:func:`coset_costs`).

**Tail-biting** (fixed rate): the bitstream of a row is read circularly, so the state before the
first step is the last L bits of the row's own stream and a row of S steps costs exactly ``S·kV``
bits. Only the low ``L − kV`` bits ``o`` of that state matter (the rest are shifted out at the first
step: the state before the first step must be one of ``j·G + o``); ``o`` is chosen by a first, unconstrained pass on the steps around the junction (the last
``h`` steps followed by the first ``h`` steps, ``h = min(S // 2, H)``, :func:`junction_steps`),
whose best path (from any state, ending in the best state, smallest index on a tie) gives ``o``:
the low bits of the state its first ``h`` symbols shift into the all-zero state
(:func:`junction_state`; the path's own state at the junction whenever ``h·kV ≥ L − kV``). The second pass runs on the row with the
state before the first step restricted to ``j·G + o`` (path metric 0, the others +inf) and ends
in the best of the states ``j·G + o`` (smallest index on a tie), which closes the circle.

The numba kernel bounds its memory on long rows by recomputing segments from checkpoints
(:mod:`mmquant.kernels.trellis`); the result is the same.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "JUNCTION_MIN",
    "coset_costs",
    "forward",
    "junction_state",
    "junction_steps",
    "rd_costs",
    "traceback",
    "viterbi_ec",
    "viterbi_fixed",
    "viterbi_rd",
]

#: Steps on each side of the junction of the first tail-biting pass: at least this many, and 8
#: constraint lengths (``8·⌈L/kV⌉``) where that is more.
JUNCTION_MIN = 32


def junction_steps(S: int, L: int, kV: int) -> int:
    """Steps ``h`` on each side of the junction in the first tail-biting pass."""
    return min(S // 2, max(JUNCTION_MIN, 8 * -(-L // kV)))


def junction_state(u: np.ndarray, L: int, kV: int) -> int:
    """The state after the symbols ``u`` shifted into the all-zero state (the junction rule)."""
    s = 0
    for v in u:
        s = ((s << kV) | int(v)) & ((1 << L) - 1)
    return s


def coset_costs(x: np.float32, delta: np.float32, inv: np.float32) -> np.ndarray:
    """Squared error to the nearest level ``Δ·i`` with ``i ≡ c (mod 4)``, for c = 0..3 (float32).

    ``i = c + 4·rint((x·inv − c)/4)`` (round half to even), error ``(x − Δ·i)²``, all in float32.
    """
    c = np.arange(4, dtype=np.float32)
    y = np.float32(x) * inv
    i = c + np.float32(4.0) * np.rint((y - c) * np.float32(0.25))
    e = np.float32(x) - delta * i
    return e * e


def forward(
    xs: np.ndarray, L: int, kV: int, d0: np.ndarray, table=None, labels=None, delta=None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the trellis over the steps ``xs`` (S, V) from path metrics ``d0``.

    Returns the final path metrics (float32, 2^L) and the back-pointers (uint8, (S, G)).
    ``table`` (V, 2^L) gives fixed-rate costs; ``labels`` (2^L uint8 coset labels) with ``delta``
    the entropy-coded costs.
    """
    P, G = 1 << kV, 1 << (L - kV)
    cols = np.arange(G)
    d = d0.astype(np.float32)
    bp = np.empty((xs.shape[0], G), np.uint8)
    if labels is not None:
        dl = np.float32(delta)
        inv = np.float32(np.float32(1.0) / dl)
    for t in range(xs.shape[0]):
        dr = d.reshape(P, G)
        j = np.argmin(dr, axis=0)
        m = dr[j, cols]
        mm = m - m.min()
        if labels is None:
            e = xs[t, 0] - table[0]
            cost = e * e
            for v in range(1, table.shape[0]):
                e = xs[t, v] - table[v]
                cost = cost + e * e
        else:
            cost = coset_costs(xs[t, 0], dl, inv)[labels]
        d = np.repeat(mm, P) + cost
        bp[t] = j
    return d, bp


def traceback(bp: np.ndarray, end: int, L: int, kV: int) -> np.ndarray:
    """States ``s_0 .. s_{S−1}`` (int64) of the path ending in state ``end``."""
    S = bp.shape[0]
    states = np.empty(S, np.int64)
    s = int(end)
    for t in range(S - 1, -1, -1):
        states[t] = s
        g = s >> kV
        s = (int(bp[t, g]) << (L - kV)) | g
    return states


def viterbi_fixed(z: np.ndarray, table: np.ndarray, L: int, kV: int) -> np.ndarray:
    """Tail-biting Viterbi of every row of ``z`` (R, S·V) float32 with the code ``table``.

    Returns
    -------
    numpy.ndarray
        uint8 ``(R, S)``: the symbols (the kV new bits of each step).
    """
    V = table.shape[0]
    R, T = z.shape
    S = T // V
    P, G = 1 << kV, 1 << (L - kV)
    h = junction_steps(S, L, kV)
    out = np.empty((R, S), np.uint8)
    zeros = np.zeros(1 << L, np.float32)
    for r in range(R):
        xs = np.ascontiguousarray(z[r], np.float32).reshape(S, V)
        sub = np.concatenate([xs[S - h :], xs[: S - h][:h]]) if h < S else xs
        d, bp = forward(sub, L, kV, zeros, table=table)
        u1 = traceback(bp, int(np.argmin(d)), L, kV) & (P - 1)
        o = junction_state(u1[:h], L, kV) & (G - 1)
        d0 = np.full(1 << L, np.inf, np.float32)
        d0[o::G] = 0.0
        d, bp = forward(xs, L, kV, d0, table=table)
        end = int(np.argmin(d[o::G])) * G + o
        out[r] = traceback(bp, end, L, kV) & (P - 1)
    return out


def viterbi_ec(z: np.ndarray, labels: np.ndarray, delta: float, W: int) -> np.ndarray:
    """Viterbi of the entropy-coded trellis (windows of ``W`` bits, one bit per step), from
    window 0, free end; returns the bits ``u`` (uint8 (R, T))."""
    R, T = z.shape
    out = np.empty((R, T), np.uint8)
    d0 = np.full(1 << W, np.inf, np.float32)
    d0[0] = 0.0
    for r in range(R):
        xs = np.ascontiguousarray(z[r], np.float32).reshape(T, 1)
        d, bp = forward(xs, W, 1, d0, labels=labels, delta=delta)
        out[r] = traceback(bp, int(np.argmin(d)), W, 1) & 1
    return out


def rd_costs(x: float, rtab: np.ndarray, roff: int, lam: float) -> tuple[list[float], list[int]]:
    """Cost and level of each coset ``c`` (``i ≡ c (mod 4)``) for one target ``x`` (float64).

    The levels are ``i/2`` (points of :func:`viterbi_rd`); of the two levels of the coset that
    bracket ``x``, the one of least ``(x − i/2)² + lam·rtab[i + roff]`` (the lower one on a tie;
    ``i + roff`` clamped to the table).
    """
    costs, levels = [], []
    last = rtab.size - 1
    for c in range(4):
        cf = float(c)
        lo = cf + 4.0 * float(np.floor((2.0 * x - cf) * 0.25))
        best, bi = np.inf, 0
        for k in range(2):
            i = lo + 4.0 * k
            ii = int(i)
            e = x - 0.5 * i
            r = min(max(ii + roff, 0), last)
            v = e * e + lam * float(rtab[r])
            if v < best:
                best, bi = v, ii
        costs.append(best)
        levels.append(bi)
    return costs, levels


def viterbi_rd(
    x: np.ndarray, labels: np.ndarray, W: int, rtab: np.ndarray, roff: int, lam: float
) -> np.ndarray:
    """Rate–distortion Viterbi of the entropy-coded trellis on one row ``x`` (float64, points ``i/2``).

    The trellis of :func:`viterbi_ec` (windows of ``W`` bits, one bit per step, from window 0,
    free end), in float64, with the cost of a transition ``(x_t − i/2)² + lam·rtab[i + roff]``
    minimised over the coset's two levels around ``x_t`` (:func:`rd_costs`): ``rtab`` is the code
    length of level ``i`` (bits), ``lam`` the Lagrange multiplier (0: the nearest level, plain
    MSE). Step: ``m[g] = min(D[g], D[g + G])`` (the first on a tie), ``D'[s] = m[s >> 1] +
    cost(labels[s])``; the end is the first best window.

    Returns
    -------
    numpy.ndarray
        int64 ``(T,)``: the levels ``i`` of the best path.
    """
    x = np.asarray(x, np.float64)
    T = x.size
    N = 1 << W
    G = N >> 1
    lab = np.asarray(labels, np.int64)
    half = np.arange(N) >> 1
    d = np.full(N, np.inf)
    d[0] = 0.0
    bp = np.empty((T, G), np.uint8)
    for t in range(T):
        cv = np.array(rd_costs(float(x[t]), rtab, roff, lam)[0])
        hi = d[G:] < d[:G]
        bp[t] = hi
        m = np.where(hi, d[G:], d[:G])
        d = m[half] + cv[lab]
    s = int(np.argmin(d))
    out = np.empty(T, np.int64)
    for t in range(T - 1, -1, -1):
        out[t] = rd_costs(float(x[t]), rtab, roff, lam)[1][lab[s]]
        g = s >> 1
        s = (int(bp[t, g]) << (W - 1)) | g
    return out
