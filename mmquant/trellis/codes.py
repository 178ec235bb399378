"""Reconstruction codes of the bitshift trellis: a pure function of an L-bit state.

A code maps every state ``s ∈ [0, 2^L)`` (the last L bits of the bitstream) to ``V`` real values,
the reconstruction of the V entries of one trellis step. The encoder and the decoder both use the
table ``C[v, s]`` (float32, shape ``(V, 2^L)``) that :func:`code_table` computes; the codes are
normalised so that their values have unit RMS over the 2^L states (rows are normalised to unit
RMS before the trellis, :mod:`mmquant.trellis.quantizer`).

``"1mad"``
    One multiply-add: ``y = (a·s + b) mod 2^32`` (a = 34038481, b = 76625530), the value is the sum
    of the four bytes of ``y`` minus its mean 510, over its standard deviation √21845: a sum of
    four nearly independent uniform bytes, close to Gaussian. Entry ``v`` of a V-vector uses
    ``v`` further steps of the same map on ``y``.
``"3inst"``
    Three instructions: ``y = (a·s + b) mod 2^32`` (a = 89226354, b = 64248484), then
    ``m = (y & 0x8FFF8FFF) ^ 0x3B603B60`` read as two IEEE half floats whose sum is the value (the
    mask keeps the sign, two exponent bits and the mantissa; the xor sets the exponent to 2^-3 ..
    2^0), scaled to unit RMS over the states.
``"strat"``
    Stratified (written here for this package): the ``P = 2^k`` states ``g·2^(kV) + p`` that share
    the bits ``g = s >> kV`` are the branches leaving every predecessor of the group, so they get
    one value in each of the P equiprobable bins of N(0, 1), in an order and at an offset in the
    bin that a hash of ``g`` picks: entry ``v`` reads the k-bit field ``p_v = (s >> v·k) mod 2^k``
    and is ``Φ⁻¹((p_v ⊕ π_v(g) + o_v(g)) / 2^k)``, ``π_v`` the top k bits and ``o_v ∈ (0, 1)`` the
    scaled 32 bits of two mixed hashes of ``g`` (:func:`mix32` of LCG steps, 1MAD and 3INST
    constants). The 1MAD and 3INST values of consecutive states are correlated, so a group's P
    branch values cluster (for k = 4 their nearest-value error on N(0, 1) is 0.10 against 0.065
    for independent Gaussian values); stratified branches lower the trellis's gap most at 3 and 4
    bits. The code depends on k and V (as the trained tables do).
``"lut"``
    A small table of ``2^Q`` V-vectors trained for the trellis (:mod:`mmquant.trellis.lut`,
    stored in the package), indexed by a hash of the state: ``idx = ((a·s + b) mod 2^32) >>
    (32 − Q)`` with the 1MAD constants.

``"tstrat"``
    The stratified code trained for the trellis: ``Φ⁻¹(u) + c(u)``, ``u ∈ (0, 1)`` the position
    of the state in the stratified code (:func:`strat_positions`) and ``c`` a piecewise-linear
    correction on 64 knots per (k, V) (:func:`correction`), trained by alternating Viterbi
    encoding and least-squares fits on N(0, 1) sequences at L = 12
    (``tools/train_trellis_strat.py``, :mod:`mmquant.trellis.lut`).

Which is best (MSE gap to D(R) in dB on N(0, 1), 16 rows of 4096, rows scaled by their
least-squares gain; ``python benchmarks/bench_trellis.py --mse --bits 1,2,3,4,5 --codes
strat,tstrat`` prints the table "best code per rate"): the trained stratified code at L ≤ 14 at
every k, e.g. k = 1..5 at L = 12: tstrat 0.33 / 0.55 / 0.72 / 0.96 / 1.39, strat 0.39 / 0.55 /
0.75 / 1.03 / 1.47; at L = 10, k = 4: 1.69 against 1.86. At L = 16 they are within 0.01 dB at
k = 2 and 4 (strat 0.31 / 0.49, tstrat 0.32 / 0.50, the noise of the measure) and tstrat is
ahead at k = 1, 3, 5 (0.21 / 0.39 / 0.60 against 0.25 / 0.39 / 0.62). 1MAD and 3INST are behind
both (L = 16, k = 1..5: 1MAD 0.34 / 0.38 / 0.55 / 0.72 / 1.03, 3INST 0.31 / 0.39 / 0.56 / 0.81 /
1.12), and so is the hashed lookup table ``"lut"`` (0.27 / 0.55 / 0.77 / 1.08 / 1.96): with
2^Q = 256 values for 2^16 states, many states share a value.

1MAD and 3INST come from QTIP (Tseng et al., arXiv:2406.11235); the constants are theirs
(1MAD) or of the same kind (3INST mask and xor), the code is written here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["CODES", "code_table", "correction", "lcg", "lut_index", "mix32", "strat_positions"]

#: Codes of the fixed-rate trellis.
CODES = ("1mad", "3inst", "strat", "lut", "tstrat")

_MAD_A, _MAD_B = 34038481, 76625530
_INST_A, _INST_B = 89226354, 64248484
_INST_MASK, _INST_XOR = 0x8FFF8FFF, 0x3B603B60
_M32 = np.uint64(0xFFFFFFFF)


def lcg(y: np.ndarray, a: int, b: int) -> np.ndarray:
    """``(a·y + b) mod 2^32`` on uint64 arrays (exact: a·y < 2^59)."""
    return (y.astype(np.uint64) * np.uint64(a) + np.uint64(b)) & _M32


def mix32(y: np.ndarray) -> np.ndarray:
    """A 32-bit mixing of uint64 arrays holding 32-bit values: xor-shift, multiply by an odd
    constant mod 2^32, xor-shift (consecutive inputs give unrelated outputs)."""
    y = y ^ (y >> np.uint64(15))
    y = (y * np.uint64(0x2C1B3C6D)) & _M32
    return y ^ (y >> np.uint64(12))


def strat_positions(L: int, V: int, k: int) -> np.ndarray:
    """Positions ``u = (p_v ⊕ π_v(g) + o_v(g)) / 2^k ∈ (0, 1)`` of every state (float64
    ``(V, 2^L)``): the stratified code is ``Φ⁻¹(u)``, the trained one ``Φ⁻¹(u) + c(u)``."""
    s = np.arange(1 << L, dtype=np.uint64)
    g = s >> np.uint64(k * V)
    out = np.empty((V, 1 << L))
    yo, yp = g, g
    for v in range(V):
        yo, yp = lcg(yo, _MAD_A, _MAD_B), lcg(yp, _INST_A, _INST_B)
        perm = mix32(yp) >> np.uint64(32 - k)
        off = (mix32(yo).astype(np.float64) + 0.5) / 2.0**32
        p = (s >> np.uint64(v * k)) & np.uint64((1 << k) - 1)
        out[v] = ((p ^ perm).astype(np.float64) + off) / float(1 << k)
    return out


def correction(u: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The piecewise-linear ``c(u)`` with values ``knots[j]`` at ``u = (j + ½)/M`` (``M`` knots),
    constant beyond the first and last knot (float64, the shape of ``u``)."""
    M = knots.shape[0]
    t = u * M - 0.5
    i = np.clip(np.floor(t).astype(np.int64), 0, M - 2)
    lam = np.clip(t - i, 0.0, 1.0)
    return (1.0 - lam) * knots[i] + lam * knots[i + 1]


def _stratified(L: int, V: int, k: int) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(strat_positions(L, V, k))


def _one_mad(y: np.ndarray) -> np.ndarray:
    s = (y & np.uint64(255)) + ((y >> np.uint64(8)) & np.uint64(255))
    s = s + ((y >> np.uint64(16)) & np.uint64(255)) + (y >> np.uint64(24))
    return (s.astype(np.float64) - 510.0) / np.sqrt(21845.0)


def _three_inst(y: np.ndarray) -> np.ndarray:
    m = ((y & np.uint64(_INST_MASK)) ^ np.uint64(_INST_XOR)).astype(np.uint32)
    halves = m.view(np.uint16).reshape(-1, 2).view(np.float16).astype(np.float64)
    return halves[:, 0] + halves[:, 1]


def lut_index(L: int, q: int) -> np.ndarray:
    """Index into a ``2^q``-entry table of every state ``s < 2^L`` (int64): the top q bits of
    ``(a·s + b) mod 2^32`` (1MAD constants)."""
    s = np.arange(1 << L, dtype=np.uint64)
    return (lcg(s, _MAD_A, _MAD_B) >> np.uint64(32 - q)).astype(np.int64)


@lru_cache(maxsize=32)
def _table(code: str, L: int, V: int, k: int) -> np.ndarray:
    s = np.arange(1 << L, dtype=np.uint64)
    out = np.empty((V, 1 << L))
    if code == "lut":
        from mmquant.trellis.lut import lut_table

        table = lut_table(k, V)
        idx = lut_index(L, int(np.log2(table.shape[0])))
        out[:] = table[idx].T
        res = out.astype(np.float32)
        res.setflags(write=False)
        return res
    if code == "tstrat":
        from scipy.special import ndtri

        from mmquant.trellis.lut import strat_knots

        u = strat_positions(L, V, k)
        res = (ndtri(u) + correction(u, strat_knots(k, V).astype(np.float64))).astype(np.float32)
        res.setflags(write=False)
        return res
    if code == "strat":
        out = _stratified(L, V, k)
        res = (out / np.sqrt(np.mean(out * out))).astype(np.float32)
        res.setflags(write=False)
        return res
    a, b, f = (_MAD_A, _MAD_B, _one_mad) if code == "1mad" else (_INST_A, _INST_B, _three_inst)
    y = lcg(s, a, b)
    for v in range(V):
        if v:
            y = lcg(y, a, b)
        out[v] = f(y)
    rms = np.sqrt(np.mean(out * out))
    res = (out / rms).astype(np.float32)
    res.setflags(write=False)
    return res


def code_table(code: str, L: int, V: int, k: int = 2) -> np.ndarray:
    """Reconstruction table ``C[v, s]`` of a code (float32, shape ``(V, 2^L)``, read-only).

    Parameters
    ----------
    code : {"1mad", "3inst", "strat", "lut", "tstrat"}
        The code (module docstring).
    L : int
        State bits, 2 to 20.
    V : int
        Entries per trellis step, 1 or 2.
    k : int
        Bits per entry: the stratified codes and the trained tables of ``"lut"`` depend on it
        (1MAD and 3INST do not); ``k·V < L``.

    Returns
    -------
    numpy.ndarray
        float32 ``(V, 2^L)``; cached (the same array object for the same arguments).
    """
    if code not in CODES:
        raise ValueError(f"code must be one of {', '.join(CODES)}; got {code!r}")
    if not 2 <= int(L) <= 20 or int(V) not in (1, 2):
        raise ValueError(f"L must be in [2, 20] and V 1 or 2, got L={L}, V={V}")
    if code in ("strat", "tstrat") and not 1 <= int(k) * int(V) < int(L):
        raise ValueError(f"the stratified code needs 1 <= k·V < L, got k={k}, V={V}, L={L}")
    if code not in ("lut", "strat", "tstrat"):
        k = 0  # one cache entry per (code, L, V)
    return _table(code, int(L), int(V), int(k))
