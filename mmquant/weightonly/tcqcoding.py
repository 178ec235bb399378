"""Trellis-coded columns: entropy-coded TCQ of one column, and its coding with one model per column.

A column of ``a`` entries (in units of its step) is quantized by entropy-coded trellis-coded
quantization on the trellis of :mod:`mmquant.trellis.entropy_coded` (Ungerboeck's rate-1/2 codes
with ``2^L`` states, :data:`~mmquant.trellis.entropy_coded.POLYS`): the points are ``i/2`` for
integer levels ``i``, split into the four cosets ``i ≡ c (mod 4)``; the window ``w_t`` of the
last ``L + 1`` path bits labels step ``t`` with the coset ``labels[w_t] = 2a + b``. From one
window, the two branches together allow the levels ``i ≡ b (mod 2)``: points ``1`` apart, the
scalar grid's density, so a step has WaterSIC's rate at a step ``1`` with TCQ's smaller error
(normalised second moment :data:`TCQ_NSM`, ``1/12`` divided by the granular gain, 1.33 dB with
256 states). The codes stored are the levels ``i`` (``int64``, like the scalar coder's integers),
the reconstruction is ``i/2``.

**Search** (:func:`quantize_tcq_column`): the Viterbi search of the rate–distortion cost
``(t − i/2)² + λ·ℓ(i)`` from window 0 with a free end (:func:`mmquant.trellis.viterbi.viterbi_rd`,
numba kernel in :mod:`mmquant.kernels.trellis`), ``ℓ(i)`` the code length of ``i`` under the
column's Gaussian model at the standard deviation of the target and ``λ = 2·ln2·G`` (the slope of
the high-rate distortion–rate curve at step 1). ``λ = 0`` would be the nearest level of the coset,
plain MSE: it loses 0.1 bit on a column at 1 bit/entry, nothing at high rate.

**Coding**: the symbol of step ``t`` is ``j = (i − b)/2 = i >> 1``; ``b = i mod 2`` is known to the
decoder from the window, and ``j``'s parity sets the next path bit (as in ``tcqec``). The model of
column ``j`` has one parameter, a standard deviation ``σ`` on the log grid of
:func:`~mmquant.weightonly.coding.std_grid` (one uint8 per column, 0 for an all-zero column, which
is not coded): ``P(j | b)`` is the Gaussian ``N(−b/2, σ²)`` integrated over the unit cell of ``j``,
i.e. the point ``i/2`` gets the mass of ``[i/2 − ½, i/2 + ½)`` under ``N(0, σ²)``. The encoder picks
``σ`` of least code length. Symbols are coded by constriction's rANS coder (``QuantizedGaussian`` on
the pooled range ``bounds``) **row by row**: the symbols of entry ``t`` of every coded column
form one call, so the decoder follows the ``n`` trellis paths in step with one coder call per row
of the matrix, not one per symbol. Side information: ``n`` bytes of model indices and two int32
bounds, as for the scalar and E8 coders.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from mmquant.kernels import load
from mmquant.trellis import viterbi
from mmquant.trellis.entropy_coded import POLYS, labels
from mmquant.weightonly.coding import (
    MAX_CODE_SPAN,
    ColumnStream,
    _occurring,
    check_vector_stream,
    std_grid,
)

__all__ = [
    "TCQ_NSM",
    "TCQ_STATES",
    "quantize_tcq_column",
    "tcq_column_bits",
    "encode_tcq_columns",
    "decode_tcq_columns",
    "check_tcq_paths",
]

#: Constraint lengths ``L`` (``2^L`` states) of the trellis column codes.
TCQ_STATES = tuple(sorted(POLYS))
#: Normalised second moment per entry (error power at step 1, high rate) by ``L``, measured on
#: 2^15 Gaussian entries at 4.5 and 6 bits (granular gains 0.99 to 1.33 dB; Ungerboeck's
#: 512-state code does no better than the 256-state one here).
TCQ_NSM = {2: 0.0664, 3: 0.0651, 4: 0.0640, 5: 0.0630, 6: 0.0627, 7: 0.0616, 8: 0.0613, 9: 0.0618}
#: Most back-pointer bytes (rows × 2^L) of one column's search.
MAX_SEARCH_BYTES = 1 << 28

_K_PER_OCTAVE = 16.0
_P_MIN = 2.0**-24


#: Largest ``|i|`` of the search's code-length table (beyond it the search clamps to the last entry,
#: i.e. compares levels by their error alone: far in the tails, where a step of 4 levels changes
#: the code length by a negligible amount).
RATE_TABLE_MAX = 1 << 16


def _rate_table(t: np.ndarray, sigma: float) -> tuple[np.ndarray, int]:
    """Code length (bits) of every level ``i`` within reach of ``t``, and the offset of level 0."""
    imax = min(math.ceil(2.0 * float(np.max(np.abs(t), initial=0.0))) + 8, RATE_TABLE_MAX)
    i = np.arange(-imax, imax + 1, dtype=np.float64)
    p = ndtr((0.5 * i + 0.5) / sigma) - ndtr((0.5 * i - 0.5) / sigma)
    return -np.log2(np.maximum(p, _P_MIN)), imax


def quantize_tcq_column(t: np.ndarray, L: int = 8, lam: float = 1.0) -> np.ndarray:
    """Levels ``i`` (``int64``, length ``a``; points ``i/2``) of one column target ``t`` (step units).

    Parameters
    ----------
    t : numpy.ndarray
        ``(a,)`` finite targets, in units of the column's step.
    L : int
        Constraint length (``2^L`` states), one of :data:`TCQ_STATES`.
    lam : float
        Lagrange multiplier in units of ``2·ln2·TCQ_NSM[L]`` (0: nearest levels, plain MSE).
    """
    t = np.asarray(t, np.float64).reshape(-1)
    if L not in POLYS:
        raise ValueError(f"L must be one of {TCQ_STATES}, got {L!r}")
    if t.size * (1 << L) > MAX_SEARCH_BYTES:
        raise ValueError(
            f"a column of {t.size} entries with 2^{L} states needs more than "
            f"{MAX_SEARCH_BYTES} bytes of back-pointers; use a smaller L"
        )
    if not np.all(np.isfinite(t)) or float(np.max(np.abs(t), initial=0.0)) > 2.0**28:
        raise ValueError("column targets must be finite and within ±2^28 steps")
    nsm = TCQ_NSM[L]
    sigma = math.sqrt(max(float(np.mean(t * t)) - nsm, 1e-4)) if t.size else 1.0
    rtab, roff = _rate_table(t, sigma)
    lmb = float(lam) * 2.0 * math.log(2.0) * nsm
    lab = labels(L)[0]
    kern = load("trellis_rd")
    if kern is None:
        return viterbi.viterbi_rd(t, lab, L + 1, rtab, roff, lmb)
    return kern.viterbi_rd(t, lab, L + 1, rtab, roff, lmb)


def check_tcq_paths(z: np.ndarray, L: int) -> None:
    """Raise ``ValueError`` unless every column of the levels ``z`` (``(a, n)``) is a path of the
    trellis from window 0 (level ``i`` of step ``t`` in the coset of the window that ``i >> 1``'s
    parity selects)."""
    _, pa, pb = labels(L)
    mask = (1 << (L + 1)) - 1
    w = np.zeros(z.shape[1], np.int64)
    for t in range(z.shape[0]):
        base = (w << 1) & mask
        zt = z[t]
        if np.any((zt & 1) != pb[base]):
            raise ValueError(f"codes are not paths of the {1 << L}-state trellis (row {t})")
        w = base | (((zt >> 1) & 1) ^ pa[base])


def _log2p(i: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``log2 P(i)`` of the model: the mass of ``[i/2 − ½, i/2 + ½)`` under ``N(0, sd²)``."""
    p = ndtr((0.5 * i + 0.5) / sd) - ndtr((0.5 * i - 0.5) / sd)
    return np.log2(np.maximum(p, _P_MIN))


def _choose_models(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model index per column (least ideal code length; 0 for all-zero columns) and its bits."""
    z = np.asarray(z, np.int64)
    a, n = z.shape
    k = np.zeros(n, np.int64)
    best = np.zeros(n)
    lo, hi = int(z.min()), int(z.max())
    if lo == hi == 0:
        return k, best
    col, pos, cnt = _occurring(z, lo, hi)
    val = (pos + lo).astype(np.float64)
    cnt = cnt.astype(np.float64)
    var = np.bincount(col, cnt * (0.5 * val) ** 2, minlength=n) / a
    sd0 = np.sqrt(np.maximum(var - 1.0 / 12.0, 1.0 / 64.0))
    k0 = np.rint((np.log2(sd0) + 3.0) * _K_PER_OCTAVE).astype(np.int64) + 1
    best = np.full(n, np.inf)
    for dk in (-3, -2, -1, 0, 1, 2, 3):
        kk = np.clip(k0 + dk, 1, 255)
        cost = -np.bincount(col, cnt * _log2p(val, std_grid(kk)[col]), minlength=n)
        better = cost < best
        best = np.where(better, cost, best)
        k = np.where(better, kk, k)
    zero = ~np.any(z != 0, axis=0)
    k[zero] = 0
    best[zero] = 0.0
    return k, best


def tcq_column_bits(z: np.ndarray) -> float:
    """Ideal code length (bits) of the ``(a, n)`` levels ``z`` under their chosen models.

    Equals the bitstream length of :func:`encode_tcq_columns` up to the coder's ≤ 32-bit flush and
    its 24-bit probability precision; side information is not included.
    """
    return float(_choose_models(z)[1].sum())


def _bounds(j: np.ndarray) -> tuple[int, int]:
    return min(-1, int(j.min())), max(1, int(j.max()))


def _constriction():
    import constriction

    return constriction


def encode_tcq_columns(z: np.ndarray, L: int) -> ColumnStream:
    """Entropy-code the ``(a, n)`` trellis levels ``z`` (see the module docstring).

    Raises
    ------
    ValueError
        Codes that are not trellis paths from window 0, beyond ±2^30, or whose symbols span more
        than :data:`~.coding.MAX_CODE_SPAN` values.
    """
    z = np.asarray(z)
    if z.ndim != 2 or z.dtype.kind not in "iu" or z.size == 0:
        raise TypeError(f"z must be a non-empty 2-D integer array, got {z.dtype} {z.shape}")
    if L not in POLYS:
        raise ValueError(f"L must be one of {TCQ_STATES}, got {L!r}")
    z = z.astype(np.int64)
    if int(np.abs(z).max()) > 2**30:
        raise ValueError("codes must lie within ±2^30")
    check_tcq_paths(z, L)
    a, n = z.shape
    j = z >> 1
    lo, hi = _bounds(j)
    if hi - lo > MAX_CODE_SPAN:
        raise ValueError(
            f"trellis symbols span {hi - lo} values; the per-column models code at most "
            f"{MAX_CODE_SPAN} (a larger step or lower rate is needed)"
        )
    k, _ = _choose_models(z)
    coded = np.flatnonzero(k)
    c = _constriction()
    coder = c.stream.stack.AnsCoder()
    if coded.size:
        sym = np.ascontiguousarray(j[:, coded]).reshape(-1)  # row by row: the decoding order
        mean = -0.5 * (z[:, coded] & 1).astype(np.float64).reshape(-1)
        sd = np.tile(std_grid(k[coded]), a)
        coder.encode_reverse(
            sym.astype(np.int32), c.stream.model.QuantizedGaussian(lo, hi), mean, sd
        )
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    return ColumnStream(
        stream=words.view(np.uint8).copy(),
        std_index=k.astype(np.uint8),
        bounds=np.array([lo, hi], np.int32),
        shape=(a, n),
    )


def decode_tcq_columns(cs: ColumnStream, L: int) -> np.ndarray:
    """Decode :func:`encode_tcq_columns`'s stream back to the ``int64`` levels (exact)."""
    if L not in POLYS:
        raise ValueError(f"L must be one of {TCQ_STATES}, got {L!r}")
    a, n, lo, hi, k, data = check_vector_stream(cs, "trellis")
    out = np.zeros((a, n), np.int64)
    coded = np.flatnonzero(k)
    if not coded.size:
        return out
    _, pa, pb = labels(L)
    mask = (1 << (L + 1)) - 1
    c = _constriction()
    gauss = c.stream.model.QuantizedGaussian(lo, hi)
    sd = std_grid(k[coded])
    w = np.zeros(coded.size, np.int64)
    rows = np.empty((a, coded.size), np.int64)
    try:
        dec = c.stream.stack.AnsCoder(data.view("<u4").astype(np.uint32))
        for t in range(a):
            base = (w << 1) & mask
            b = pb[base]
            jt = np.asarray(dec.decode(gauss, -0.5 * b, sd), np.int64)
            rows[t] = 2 * jt + b
            w = base | ((jt & 1) ^ pa[base])
        left = not dec.is_empty()
    except (ValueError, RuntimeError, OverflowError, TypeError) as exc:
        raise ValueError(f"corrupt bitstream: {exc}") from None
    if left:
        raise ValueError("corrupt bitstream: it holds more than the codes of its shape")
    out[:, coded] = rows
    return out
