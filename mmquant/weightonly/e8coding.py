"""E8 lattice columns: closest points, and their entropy coding with one cheap model per column.

A column of ``a`` entries (in units of its step) is cut into ``⌊a/8⌋`` blocks of 8, each quantized
to the closest point ``λ`` of E8 = D8 ∪ (D8 + ½) (:func:`mmquant.lattices.closest.closest_e8`);
the last ``a mod 8`` entries are rounded to integers (the lattice Z, same point density). The
integer codes are ``z = 2λ`` (E8 points have integer or half-integer coordinates), so a matrix of
codes is an ``int64`` array like the scalar coder's, and the reconstruction is ``z/2``.

Each block is written without redundancy as 9 symbols (as in :mod:`mmquant.lattices.entropy_coded`):
the coset bit ``s`` (λ ∈ D8 + s/2), ``m_i = λ_i − s/2`` for ``i < 7`` and ``t = (m_7 − p)/2`` with
``p = (Σ_{i<7} m_i) mod 2``. The model of column ``j`` has one parameter, a standard deviation
``σ_j`` (in lattice units, stored as one uint8 on the log grid of :func:`~.coding.std_grid`; 0 marks
an all-zero column, not coded), from which every symbol's law follows as if ``λ`` were a
Gaussian ``N(0, σ_j²)`` per coordinate, conditioned on what the decoder already has:

* ``s``: Bernoulli with ``P(s = 1) = Θ₂⁸ / (Θ₃⁸ + Θ₄⁸ + Θ₂⁸)`` (the Gaussian mass of the half-
  integer coset of E8; the Θ are one-dimensional Gaussian sums, see :func:`coset_probability`);
* ``m_i`` given ``s``: the quantized Gaussian ``N(−s/2, σ_j²)`` on unit cells;
* ``t`` given ``s`` and ``p``: the quantized Gaussian ``N((−s/2 − p)/2, σ_j²/4)``;
* the ``a mod 8`` tail integers: the quantized Gaussian ``N(0, σ_j²)``.

The encoder picks ``σ_j`` of least code length.

**Row offsets.** When the rows of the matrix differ in scale (real layers: the per-row
variance's AM/GM is 0.02–0.09 bit on MiniLM), one Gaussian per column pays for the mixture. The
stream then starts with a mode bit and one uint8 offset ``k_r`` per row (uniform code, 8 bits),
and entry ``(r, j)`` is modelled with the std index ``k_j + k_r − 128`` (the same log grid;
offsets from the rows' RMS over the column stds, then each ``k_j`` refined by ±3); the coset
bit's law is the product form ``ΠΘ₂/(ΠΘ₃ + ΠΘ₄ + ΠΘ₂)`` over the block's 8 stds. The encoder
takes the mode of fewer bits (offsets included), so iid rows keep one model per column at the
cost of the mode bit. Symbols are coded by constriction's rANS coder
(``QuantizedGaussian`` on the pooled symbol range ``bounds``, ``Bernoulli``), columns last to
first so that they decode first to last. Side information: ``n`` bytes of model indices and two
int32 bounds, as for the scalar coder.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import ndtr

from mmquant.lattices.closest import closest_e8
from mmquant.weightonly.coding import MAX_CODE_SPAN, ColumnStream, check_vector_stream, std_grid

__all__ = [
    "quantize_e8_column",
    "coset_probability",
    "e8_column_bits",
    "encode_e8_columns",
    "decode_e8_columns",
]

_K_PER_OCTAVE = 16.0
_P_MIN = 2.0**-20
_CHUNK = 1 << 18  # symbols per step of the code-length computation
_ROW0 = 128  # row offset of a factor 1
_K_LO, _K_HI = -100, 400  # std indices of the per-entry models (grid of std_grid)


def quantize_e8_column(t: np.ndarray) -> np.ndarray:
    """Codes ``z = 2λ`` (``int64``, length ``a``) of the closest E8 points to ``t`` (step units).

    Blocks of 8 consecutive entries go to E8, the ``a mod 8`` last ones to Z.
    """
    t = np.asarray(t, np.float64)
    a8 = t.size - t.size % 8
    out = np.empty(t.size, np.float64)
    if a8:
        out[:a8] = closest_e8(t[:a8].reshape(-1, 8)).reshape(-1)
    out[a8:] = np.floor(t[a8:] + 0.5)
    return (2.0 * out).astype(np.int64)


def coset_probability(std: np.ndarray) -> np.ndarray:
    """``P(s = 1)`` of the model: the half-integer coset's share of a discrete Gaussian on E8.

    ``Θ₃ = Σ_{k∈Z} e^{−k²/2σ²}``, ``Θ₄ = Σ_{k∈Z} (−1)^k e^{−k²/2σ²}``,
    ``Θ₂ = Σ_{k∈Z+½} e^{−k²/2σ²}``; D8 holds ``(Θ₃⁸ + Θ₄⁸)/2`` of the mass and D8 + ½ holds
    ``Θ₂⁸/2``. For ``σ ≥ 2`` the share is ½ to within 1e-30; clipped to ``[2^-20, 1 − 2^-20]``.
    """
    s = np.asarray(std, np.float64)
    k = np.arange(-24, 25, dtype=np.float64)[:, None]
    small = np.minimum(s, 2.0)[None, :]
    g3 = np.exp(-(k**2) / (2 * small**2))
    th3 = g3.sum(axis=0)
    th4 = (g3 * np.where(k % 2 == 0, 1.0, -1.0)).sum(axis=0)
    th2 = np.exp(-((k + 0.5) ** 2) / (2 * small**2)).sum(axis=0)
    r = (th2 / th3) ** 8
    p = r / (1.0 + (th4 / th3) ** 8 + r)
    p = np.where(s >= 2.0, 0.5, p)
    return np.clip(p, _P_MIN, 1.0 - _P_MIN)


def _symbols(z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Column-major symbol streams of ``z`` (``(a, n)`` codes ``2λ``).

    Returns ``s (nb, n)``, ``m (nb, 7, n)``, ``t (nb, n)``, ``p (nb, n)``, ``tail (a mod 8, n)``.
    """
    a, n = z.shape
    a8 = a - a % 8
    blk = z[:a8].reshape(a8 // 8, 8, n)
    s = blk[:, 0, :] & 1  # odd codes: half-integer coordinates
    m = (blk - s[:, None, :]) // 2  # λ_i − s/2
    p = m[:, :7, :].sum(axis=1) & 1
    t = (m[:, 7, :] - p) // 2
    return s, m[:, :7, :], t, p, z[a8:] // 2


def _from_symbols(
    s: np.ndarray, m: np.ndarray, t: np.ndarray, tail: np.ndarray, a: int
) -> np.ndarray:
    """Inverse of :func:`_symbols` (``(a, n)`` codes ``2λ``)."""
    nb, n = s.shape
    p = m.sum(axis=1) & 1
    m7 = 2 * t + p
    blk = np.concatenate([m, m7[:, None, :]], axis=1) * 2 + s[:, None, :]
    return np.concatenate([blk.reshape(nb * 8, n), 2 * tail], axis=0)[:a]


def _log2_cell(v: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``−log2 P(v)`` of the quantized Gaussian ``N(mean, std²)`` on unit cells (≥ 24 bits cap)."""
    p = ndtr((v - mean + 0.5) / std) - ndtr((v - mean - 0.5) / std)
    return -np.log2(np.maximum(p, 2.0**-24))


def _bits(z: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Ideal code length (bits) of each column of ``z`` under model indices ``k`` (all ≥ 1)."""
    sd = std_grid(k)[None, :]
    s, m, t, p, tail = _symbols(z)
    pi = coset_probability(std_grid(k))[None, :]
    bits = -np.sum(np.where(s == 1, np.log2(pi), np.log2(1.0 - pi)), axis=0)
    for i in range(m.shape[1]):
        bits += np.sum(_log2_cell(m[:, i, :], -0.5 * s, sd), axis=0)
    bits += np.sum(_log2_cell(t, (-0.5 * s - p) / 2.0, sd / 2.0), axis=0)
    bits += np.sum(_log2_cell(tail, 0.0, sd), axis=0)
    return bits


@lru_cache(maxsize=1)
def _theta_logs() -> tuple[np.ndarray, np.ndarray]:
    """``ln Θ₂/Θ₃`` and ``ln Θ₄/Θ₃`` on the std index grid ``K = _K_LO … _K_HI``."""
    sd = std_grid(np.arange(_K_LO, _K_HI + 1))
    small = np.minimum(sd, 2.0)[None, :]
    k = np.arange(-24, 25, dtype=np.float64)[:, None]
    g3 = np.exp(-(k**2) / (2 * small**2))
    th3 = g3.sum(axis=0)
    th4 = (g3 * np.where(k % 2 == 0, 1.0, -1.0)).sum(axis=0)
    th2 = np.exp(-((k + 0.5) ** 2) / (2 * small**2)).sum(axis=0)
    floor = 1e-300  # finite logs: no NaN from mixed blocks, whatever the offsets
    l2 = np.where(sd >= 2.0, 0.0, np.log(np.maximum(th2 / th3, floor)))
    l4 = np.where(sd >= 2.0, np.log(floor), np.log(np.maximum(th4 / th3, floor)))
    return l2, l4


def _coset_p_blocks(kb: np.ndarray) -> np.ndarray:
    """``P(s = 1)`` of blocks whose 8 coordinates have std indices ``kb`` (``(nb, 8, m)``).

    The product form of :func:`coset_probability` (which it equals when the 8 are equal, up to
    rounding): ``Π Θ₂ / (Π Θ₃ + Π Θ₄ + Π Θ₂)``, clipped to ``[2^-20, 1 − 2^-20]``.
    """
    l2, l4 = _theta_logs()
    i = np.clip(kb, _K_LO, _K_HI) - _K_LO
    s2 = l2[i].sum(axis=1)
    s4 = l4[i].sum(axis=1)
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-s2) + np.exp(s4 - s2))
    return np.clip(np.nan_to_num(p, nan=0.5), _P_MIN, 1.0 - _P_MIN)


def _std_index(k: np.ndarray, kr: np.ndarray) -> np.ndarray:
    """Std index of every entry (``(a, m)``): column index plus row offset."""
    return np.clip(k[None, :] + kr[:, None] - _ROW0, _K_LO, _K_HI)


def _bits_rows(z: np.ndarray, k: np.ndarray, kr: np.ndarray) -> np.ndarray:
    """Ideal bits of each column of ``z`` with per-entry std ``std_grid(k_j + kr_r − 128)``."""
    a, m = z.shape
    a8 = a - a % 8
    kk = _std_index(k, kr)
    sd = std_grid(kk)
    s, mm, t, p, tail = _symbols(z)
    nb = a8 // 8
    bits = np.zeros(m)
    if nb:
        pi = _coset_p_blocks(kk[:a8].reshape(nb, 8, m))
        bits -= np.sum(np.where(s == 1, np.log2(pi), np.log2(1.0 - pi)), axis=0)
        sdb = sd[:a8].reshape(nb, 8, m)
        bits += np.sum(_log2_cell(mm, -0.5 * s[:, None, :], sdb[:, :7, :]), axis=(0, 1))
        bits += np.sum(_log2_cell(t, (-0.5 * s - p) / 2.0, sdb[:, 7, :] / 2.0), axis=0)
    bits += np.sum(_log2_cell(tail, 0.0, sd[a8:]), axis=0)
    return bits


def _row_indices(z: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Row offsets (uint8 range, 128 = none): RMS of each row's points over the column stds."""
    live = k > 0
    if not np.any(live):
        return np.full(z.shape[0], _ROW0, np.int64)
    r = np.mean((0.5 * z[:, live] / std_grid(k[live])[None, :]) ** 2, axis=1)
    kr = np.rint(0.5 * np.log2(np.maximum(r, 2.0**-16)) * _K_PER_OCTAVE) + _ROW0
    return np.clip(kr, 0, 255).astype(np.int64)


def _choose_row_models(z: np.ndarray, k0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row offsets and column indices (``k0`` refined by ±3 given the rows), with their bits."""
    kr = _row_indices(z, k0)
    a, n = z.shape
    k = k0.copy()
    best = np.zeros(n)
    step = max(1, _CHUNK // max(9 * a, 1))
    for c0 in range(0, n, step):
        zc = z[:, c0 : c0 + step]
        kc0 = k0[c0 : c0 + step]
        live = kc0 > 0
        kc = kc0.copy()
        bc = np.where(live, np.inf, 0.0)
        for dk in (-3, -2, -1, 0, 1, 2, 3):
            kk = np.where(live, np.clip(kc0 + dk, 1, 255), 1)
            cost = _bits_rows(zc, kk, kr)
            better = live & (cost < bc)
            bc = np.where(better, cost, bc)
            kc = np.where(better, kk, kc)
        k[c0 : c0 + step] = kc
        best[c0 : c0 + step] = bc
    return kr, k, best


def _choose(z: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, float]:
    """The cheaper of one model per column and per-column models times row offsets.

    Returns ``(row offsets or None, column indices, bits)``; the bits count the mode bit and
    8 bits per row offset.
    """
    k, bits = _choose_models(z)
    plain = float(bits.sum()) + 1.0
    if z.shape[0] < 2 or not np.any(k):
        return None, k, plain
    kr, kk, rb = _choose_row_models(z, k)
    rows = float(rb.sum()) + 1.0 + 8.0 * z.shape[0]
    if rows < plain:
        return kr, kk, rows
    return None, k, plain


def _choose_models(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model index per column (least ideal code length; 0 for all-zero columns) and its bits."""
    z = np.asarray(z, np.int64)
    a, n = z.shape
    k = np.zeros(n, np.int64)
    best = np.zeros(n)
    step = max(1, _CHUNK // max(9 * a, 1))
    for c0 in range(0, n, step):
        zc = z[:, c0 : c0 + step]
        var = np.mean((zc / 2.0) ** 2, axis=0)
        k0 = (
            np.rint(
                (np.log2(np.sqrt(np.maximum(var - 0.07, 1.0 / 64.0))) + 3.0) * _K_PER_OCTAVE
            ).astype(np.int64)
            + 1
        )
        kc = np.zeros(zc.shape[1], np.int64)
        bc = np.full(zc.shape[1], np.inf)
        for dk in (-3, -2, -1, 0, 1, 2, 3):
            kk = np.clip(k0 + dk, 1, 255)
            cost = _bits(zc, kk)
            better = cost < bc
            bc = np.where(better, cost, bc)
            kc = np.where(better, kk, kc)
        zero = ~np.any(zc != 0, axis=0)
        kc[zero] = 0
        bc[zero] = 0.0
        k[c0 : c0 + step] = kc
        best[c0 : c0 + step] = bc
    return k, best


def e8_column_bits(z: np.ndarray) -> float:
    """Ideal code length (bits) of the ``(a, n)`` E8 codes ``z`` under their chosen models.

    Equals the bitstream length of :func:`encode_e8_columns` up to the coder's ≤ 32-bit flush and
    its 24-bit probability precision (the mode bit and any row offsets included); the side
    information outside the stream is not.
    """
    return _choose(np.asarray(z, np.int64))[2]


def _column_models(
    kj: int, kr: np.ndarray | None, sd: float, pi: float, a: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry stds (``(a,)``) and per-block coset probabilities of one column's models."""
    nb = a // 8
    if kr is None:
        return np.full(a, sd), np.full(nb, pi)
    kk = _std_index(np.array([kj]), kr)[:, 0]
    return std_grid(kk), _coset_p_blocks(kk[: 8 * nb].reshape(nb, 8, 1))[:, 0]


def _bounds(s: np.ndarray, m: np.ndarray, t: np.ndarray, tail: np.ndarray) -> tuple[int, int]:
    vals = [x for x in (m, t, tail) if x.size]
    lo = min([-1, *(int(x.min()) for x in vals)])
    hi = max([1, *(int(x.max()) for x in vals)])
    return lo, hi


def _constriction():
    import constriction

    return constriction


def encode_e8_columns(z: np.ndarray) -> ColumnStream:
    """Entropy-code ``(a, n)`` E8 codes ``z = 2λ`` column by column (see the module docstring).

    Raises
    ------
    ValueError
        Codes that are not ``2λ`` of E8 points (and integers in the tail), beyond ±2^30, or whose
        symbols span more than :data:`~.coding.MAX_CODE_SPAN` values.
    """
    z = np.asarray(z)
    if z.ndim != 2 or z.dtype.kind not in "iu" or z.size == 0:
        raise TypeError(f"z must be a non-empty 2-D integer array, got {z.dtype} {z.shape}")
    z = z.astype(np.int64)
    if int(np.abs(z).max()) > 2**30:
        raise ValueError("codes must lie within ±2^30")
    a, n = z.shape
    s, m, t, p, tail = _symbols(z)
    if not np.array_equal(_from_symbols(s, m, t, tail, a), z):
        raise ValueError("codes are not twice E8 points (blocks of 8) and even integers (tail)")
    lo, hi = _bounds(s, m, t, tail)
    if hi - lo > MAX_CODE_SPAN:
        raise ValueError(
            f"E8 symbols span {hi - lo} values; the per-column models code at most "
            f"{MAX_CODE_SPAN} (a larger step or lower rate is needed)"
        )
    kr, k, _ = _choose(z)
    c = _constriction()
    gauss = c.stream.model.QuantizedGaussian(lo, hi)
    bern = c.stream.model.Bernoulli(perfect=False)
    coder = c.stream.stack.AnsCoder()
    sd = std_grid(np.maximum(k, 1))
    pi = coset_probability(sd)
    nb = s.shape[0]
    for j in range(n - 1, -1, -1):
        if k[j] == 0:
            continue
        sdj, pij = _column_models(k[j], kr, sd[j], pi[j], a)
        sj, pj = s[:, j], p[:, j]
        if tail.shape[0]:
            coder.encode_reverse(
                tail[:, j].astype(np.int32), gauss, np.zeros(tail.shape[0]), sdj[8 * nb :]
            )
        if sj.size:
            sdb = sdj[: 8 * nb].reshape(nb, 8)
            coder.encode_reverse(
                t[:, j].astype(np.int32), gauss, (-0.5 * sj - pj) / 2.0, sdb[:, 7] / 2.0
            )
            mj = m[:, :, j].reshape(-1)
            coder.encode_reverse(
                mj.astype(np.int32), gauss, np.repeat(-0.5 * sj, 7), sdb[:, :7].reshape(-1)
            )
            coder.encode_reverse(sj.astype(np.int32), bern, pij)
    if np.any(k):
        if kr is not None:
            coder.encode_reverse(kr.astype(np.int32), c.stream.model.Uniform(256))
        coder.encode_reverse(np.array([int(kr is not None)], np.int32), bern, np.array([0.5]))
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    return ColumnStream(
        stream=words.view(np.uint8).copy(),
        std_index=k.astype(np.uint8),
        bounds=np.array([lo, hi], np.int32),
        shape=(a, n),
    )


def decode_e8_columns(cs: ColumnStream) -> np.ndarray:
    """Decode :func:`encode_e8_columns`'s stream back to the ``int64`` codes ``2λ`` (exact)."""
    a, n, lo, hi, k, data = check_vector_stream(cs, "E8")
    out = np.zeros((a, n), np.int64)
    if not np.any(k):
        return out
    nb, tl = a // 8, a % 8
    c = _constriction()
    gauss = c.stream.model.QuantizedGaussian(lo, hi)
    bern = c.stream.model.Bernoulli(perfect=False)
    sd = std_grid(np.maximum(k, 1))
    pi = coset_probability(sd)
    try:
        dec = c.stream.stack.AnsCoder(data.view("<u4").astype(np.uint32))
        kr = None
        if int(dec.decode(bern, np.array([0.5]))[0]):
            kr = np.asarray(dec.decode(c.stream.model.Uniform(256), a), np.int64)
        for j in range(n):
            if k[j] == 0:
                continue
            sdj, pij = _column_models(int(k[j]), kr, float(sd[j]), float(pi[j]), a)
            s = np.asarray(dec.decode(bern, pij), np.int64) if nb else np.zeros(0, int)
            if nb:
                sdb = sdj[: 8 * nb].reshape(nb, 8)
                mean = np.repeat(-0.5 * s, 7)
                m = np.asarray(dec.decode(gauss, mean, sdb[:, :7].reshape(-1)), np.int64)
                m = m.reshape(nb, 7)
                p = m.sum(axis=1) & 1
                t = np.asarray(dec.decode(gauss, (-0.5 * s - p) / 2.0, sdb[:, 7] / 2.0))
                blk = _from_symbols(
                    s[:, None],
                    m[:, :, None],
                    t.astype(np.int64)[:, None],
                    np.zeros((0, 1), int),
                    8 * nb,
                )
                out[: 8 * nb, j] = blk[:, 0]
            if tl:
                tail = dec.decode(gauss, np.zeros(tl), sdj[8 * nb :])
                out[8 * nb :, j] = 2 * np.asarray(tail, np.int64)
        left = not dec.is_empty()
    except (ValueError, RuntimeError, OverflowError, TypeError) as exc:
        raise ValueError(f"corrupt bitstream: {exc}") from None
    if left:
        raise ValueError("corrupt bitstream: it holds more than the codes of its shape")
    return out
