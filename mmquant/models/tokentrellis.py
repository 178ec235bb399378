"""Trellis-coded static channel codes: the ``act_code="tcq"`` inner code of the token codes.

:class:`TrellisChannelCode` is a drop-in for :class:`~mmquant.models.channelcode.ChannelCode`
inside :class:`~mmquant.models.actcodes.TokenCode` (same ``bits``, ``bits_per_entry`` and
``quantize``). A token ``u`` (a row of ``[tokens, n]``, already transformed and divided by its
per-token scale) is coded as

1. ``v_j = (u_j − m_j) / σ_j``: offset and standard deviation of each coordinate, constants of
   the layer fitted on calibration data (so ``v`` has unit variance per coordinate);
2. coordinate ``j`` gets ``b_j ∈ {0, …, 8}`` bits and a code, chosen once by greedy integer
   reverse waterfilling (:func:`~mmquant.models.channelcode.allocate_bits`) on the error
   weight ``w_j σ_j²`` times the normalised MSE at ``b`` bits *measured on the calibration
   data* (:class:`CodeCurves`): below :data:`SCALAR_FROM` bits the lesser of the trellis's
   (all coordinates of a token coded as one row) and the uniform scalar code's (best clipping
   range per coordinate), which picks the coordinate's code; from there on the uniform code's
   (at ``b`` close to ``L`` the trellis keeps few bits of memory). The curves are made convex
   in ``b`` so that the greedy allocation does not stall: a bimodal coordinate (the massive
   values of a few tokens) whose trellis error stalls at some ``b`` gets the bits of the
   uniform code that covers its outliers. Trellis coordinates with the same ``b`` form a
   *class*;
3. the ``n_c ≥ 2`` coordinates of a class of ``b`` bits of a token (in coordinate order) are
   one tail-biting row of the bitshift trellis of :mod:`mmquant.trellis` (``b`` bits per step,
   ``V = 1``, ``L_c = min(L, n_c·b)`` state bits so that the row holds a state, the trained
   stratified code ``"tstrat"`` where it exists, else ``"strat"``), coded by the Viterbi
   search (:func:`mmquant.trellis.quantizer.encode_rows`). The rows go to the Viterbi search
   directly, not through :class:`~mmquant.trellis.quantizer.TrellisCoded` (which would rotate,
   pad to a multiple of 8 and store a float16 scale per row: padding and scales cost bits, and
   the rotation is not needed, the coordinates being normalised and decorrelated by the
   online transform); rows of any length work;
4. ``v̂`` is the decoded row times a static least-squares gain of the class (fitted on the
   calibration data), and ``û = m + σ·v̂``; the uniform coordinates as in
   :class:`~mmquant.models.channelcode.ChannelCode` (midrise, per-coordinate range).

Everything but the symbols is a constant of the layer, so a token costs exactly
``Σ_j b_j`` bits (the tail-biting trellis stores no start state): ``bits_per_entry =
mean(b)`` is what is stored (:meth:`TrellisChannelCode.encode`, :func:`stored_bits`).

Measured (``benchmarks/bench_w4a4_targets.py``, 32 held-out sentences, 32 calibration
sentences, weights unquantized, 4.5 bits per activation and per Q/K entry): ``1 − cos`` / logit
error 1.25e-2 / 1.24e-2 with the channel codes, 6.5e-3 / 8.9e-3 with ``act_code="tcq"``,
``qk_code="tcq"``. Encode cost at L = 12: about 1–3.5 µs per entry on one loaded core
(``benchmarks/bench_tokentrellis.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from mmquant.kernels import load
from mmquant.models.channelcode import MAX_BITS, ChannelCode, allocate_bits
from mmquant.trellis.codes import code_table
from mmquant.trellis.quantizer import L_MAX, decode_symbols, encode_rows
from mmquant.validation import check_float, check_int

__all__ = [
    "CodeCurves",
    "DEFAULT_L",
    "FIT_TOKENS",
    "SCALAR_FROM",
    "TrellisChannelCode",
    "TrellisRecord",
    "class_table",
    "stored_bits",
    "trellis_curve",
]

#: State bits of the trellis (2^12 states: about 1 µs per coded entry on one core).
DEFAULT_L = 12
#: First bit count coded by the uniform scalar code instead of the trellis (at L = 12 the
#: trellis is 2.2 / 3.0 / 5.8 dB from D(R) at 6 / 7 / 8 bits; the clipped uniform code about 2).
SCALAR_FROM = 6
#: Most calibration tokens on which :meth:`TrellisChannelCode.fit` measures the trellis's
#: error curves.
FIT_TOKENS = 512
#: (bits per entry) with a trained stratified code at V = 1 (:mod:`mmquant.trellis.lut`).
_TRAINED = (1, 2, 3, 4, 5)


def class_table(bits: int, L: int) -> np.ndarray:
    """Reconstruction table (float32 ``(1, 2^L)``) of the trellis of a class of ``bits`` bits."""
    b = check_int(bits, "bits", 1, MAX_BITS)
    L = check_int(L, "L", b + 1, L_MAX)
    return code_table("tstrat" if b in _TRAINED else "strat", L, 1, b)


def _encode(z: np.ndarray, table: np.ndarray, L: int, b: int) -> np.ndarray:
    return encode_rows(np.ascontiguousarray(z, np.float32), table, L, b)


def _decode(u: np.ndarray, table: np.ndarray, L: int, b: int) -> np.ndarray:
    kern = load("trellis")
    if kern is None:
        return decode_symbols(u, table, L, b)
    return kern.decode_fixed(u, table, L, b)


@lru_cache(maxsize=16)
def trellis_curve(L: int = DEFAULT_L, rows: int = 32, length: int = 256) -> np.ndarray:
    """Normalised MSE of the class trellis at ``0..MAX_BITS`` bits on N(0, 1) (float64 (9,)).

    Measured on ``rows`` seeded Gaussian rows of ``length`` entries, each reconstruction times
    the least-squares gain over all rows (as :class:`TrellisChannelCode` applies one per class);
    entry 0 is 1 (the coordinate's variance). Non-increasing.
    """
    L = check_int(L, "L", MAX_BITS + 1, L_MAX)
    z = np.random.default_rng(12345).standard_normal((rows, length)).astype(np.float32)
    out = np.ones(MAX_BITS + 1)
    for b in range(1, MAX_BITS + 1):
        t = class_table(b, L)
        zh = _decode(_encode(z, t, L, b), t, L, b).astype(np.float64)
        g = float(np.sum(zh * z) / max(float(np.sum(zh * zh)), 1e-300))
        out[b] = min(float(np.mean((z - g * zh) ** 2)), out[b - 1])
    return out


def _trellis_curves(v: np.ndarray, top: int, L: int) -> np.ndarray:
    """Per coordinate, the trellis's MSE at ``0..top`` bits on normalised data ``v`` (all
    coordinates of a token as one row, :data:`FIT_TOKENS` evenly spaced tokens at most, each
    rate's reconstruction times its least-squares gain): float64 ``[top + 1, n]``."""
    rows = np.unique(np.linspace(0, v.shape[0] - 1, min(v.shape[0], FIT_TOKENS)).astype(int))
    z = v[rows]
    out = np.empty((top + 1, v.shape[1]))
    out[0] = np.mean(z * z, axis=0)
    for b in range(1, top + 1):
        Lb = min(L, z.shape[1] * b)
        t = class_table(b, Lb)
        zh = _decode(_encode(z, t, Lb, b), t, Lb, b).astype(np.float64)
        den = float(np.sum(zh * zh))
        g = max(float(np.sum(zh * z)), 0.0) / den if den > 0 else 0.0
        out[b] = np.mean((z - g * zh) ** 2, axis=0)
    return out


def _convex(curve: np.ndarray) -> np.ndarray:
    """Lower convex hull in ``b`` of every column of ``curve`` (``[bits + 1, n]``), as values.

    The greedy waterfilling is exact on convex curves only: a coordinate whose measured error
    stalls at one bit count (a bimodal coordinate the trellis clips) would never be given the
    next bits, however large the drop after them.
    """
    m = curve.shape[0]
    out = np.array(curve, np.float64)
    for j in range(curve.shape[1]):
        y = curve[:, j]
        hull = [0]
        for b in range(1, m):
            while len(hull) >= 2:
                b0, b1 = hull[-2], hull[-1]
                # drop b1 if it lies on or above the chord from b0 to b
                if (y[b1] - y[b0]) * (b - b0) >= (y[b] - y[b0]) * (b1 - b0):
                    hull.pop()
                else:
                    break
            hull.append(b)
        out[:, j] = np.interp(np.arange(m), hull, y[hull])
    return out


def _uniform(v: np.ndarray, c: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (uint8) and values of the midrise uniform code of ``v`` on ``[−c, c]`` (per
    column) at ``b`` bits."""
    levels = float(2**b)
    step = np.where(c > 0, 2.0 * c / levels, 1.0)
    idx = np.clip(np.floor((v + c) / step), 0.0, levels - 1.0)
    return idx.astype(np.uint8), -c + (idx + 0.5) * step


def _levels(u: np.ndarray, c: np.ndarray, b: int) -> np.ndarray:
    """Values of the uniform code's indices ``u`` (inverse of :func:`_uniform`)."""
    step = np.where(c > 0, 2.0 * c / 2.0**b, 1.0)
    return np.where(c > 0, -c + (u.astype(np.float64) + 0.5) * step, 0.0)


def _calibration(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"calibration data must be [tokens ≥ 2, channels ≥ 1], got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"calibration data must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("calibration data contain NaN or Inf")
    return a


def _normalise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, std, v)`` of calibration data: ``v = (a − mean)/std`` (std 1 where constant)."""
    mu = a.mean(axis=0)
    sd = np.sqrt(np.mean((a - mu) ** 2, axis=0))
    sd = np.where(sd > 0, sd, 1.0)
    return mu, sd, (a - mu) / sd


@dataclass(frozen=True)
class TrellisRecord:
    """What :meth:`TrellisChannelCode.encode` stores for ``tokens`` tokens.

    Attributes
    ----------
    tokens : int
        Number of coded tokens.
    symbols : tuple of numpy.ndarray
        Per class (in the order of :attr:`TrellisChannelCode.classes`), uint8 ``[tokens, n_c]``
        symbols of ``b_c`` bits each (trellis symbols, or uniform indices for one-coordinate
        classes).
    """

    tokens: int
    symbols: tuple[np.ndarray, ...]


def stored_bits(code: TrellisChannelCode, record: TrellisRecord) -> int:
    """Bits a packed ``record`` of ``code`` holds: ``Σ_c symbols_c.size · b_c``."""
    return int(sum(s.size * b for s, (b, _, _) in zip(record.symbols, code.classes)))


@dataclass(frozen=True, eq=False)
class CodeCurves:
    """Measured error curves of :class:`TrellisChannelCode` on calibration data, before the bits.

    ``curve[b, j]``: normalised MSE of coordinate ``j`` at ``b`` bits (the lesser of the
    trellis's and the uniform code's, made non-increasing and convex in ``b``); the error that reaches the
    output is ``weight_j · std_j² · curve[b, j]``. Allocate bits on them (e.g. jointly over
    several codes with :func:`~mmquant.models.channelcode.allocate_bits`), then :meth:`code`.
    """

    mean: np.ndarray
    std: np.ndarray
    v: np.ndarray = field(repr=False)
    curve: np.ndarray = field(repr=False)
    use_trellis: np.ndarray = field(repr=False)
    clip: np.ndarray = field(repr=False)
    L: int = DEFAULT_L

    @classmethod
    def measure(
        cls,
        x: Any,
        *,
        L: int = DEFAULT_L,
        scalar_from: int = SCALAR_FROM,
        max_bits: int = MAX_BITS,
    ) -> CodeCurves:
        """Curves of calibration data ``x`` (``[tokens ≥ 2, n]``; see :meth:`TrellisChannelCode.fit`)."""
        a = _calibration(x)
        mb = check_int(max_bits, "max_bits", 1, MAX_BITS)
        L = check_int(L, "L", MAX_BITS + 1, L_MAX)
        sf = check_int(scalar_from, "scalar_from", 1, MAX_BITS + 1)
        mu, sd, v = _normalise(a)
        _, mse, clip = ChannelCode.curves(v, mb)
        use_t = np.zeros_like(mse, dtype=bool)
        top = min(sf - 1, mb)
        if a.shape[1] >= 2 and top >= 1:
            mse_t = _trellis_curves(v, top, L)
            use_t[1 : top + 1] = mse_t[1:] < mse[1 : top + 1]
            mse[1 : top + 1] = np.minimum(mse_t[1:], mse[1 : top + 1])
        return cls(mu, sd, v, _convex(np.minimum.accumulate(mse, axis=0)), use_t, clip, L)

    def code(self, bits: Any) -> TrellisChannelCode:
        """The code of the allocation ``bits`` (``(n,)`` integers ``≤`` the curves' top)."""
        b = np.asarray(bits)
        n = self.mean.size
        if b.shape != (n,) or b.dtype.kind not in "iu":
            raise ValueError(f"bits must be {n} integers, got {b.shape} {b.dtype}")
        if n and (b.min() < 0 or b.max() >= self.curve.shape[0]):
            raise ValueError(f"bits must be integers in [0, {self.curve.shape[0] - 1}]")
        b = b.astype(np.int64)
        cols = np.arange(n)
        scalar = ~self.use_trellis[b, cols]
        gain = np.ones(MAX_BITS + 1)
        code = TrellisChannelCode(self.mean, self.std, b, gain, self.clip[b, cols], scalar, self.L)
        return code._fit_gains(self.v)


@dataclass(frozen=True, eq=False)
class TrellisChannelCode:
    """Static code of ``[tokens, n]`` data with trellis-coded rate classes (module docstring).

    Build it with :meth:`fit`.

    Attributes
    ----------
    mean, std : numpy.ndarray
        ``(n,)`` offset and scale of each coordinate.
    bits : numpy.ndarray
        ``(n,)`` int64 bits of each coordinate, 0 to :data:`MAX_BITS`.
    gain : numpy.ndarray
        ``(MAX_BITS + 1,)`` static gain of the trellis class of each bit count.
    clip : numpy.ndarray
        ``(n,)`` clipping range (in units of ``std``) of each coordinate for the uniform code.
    scalar : numpy.ndarray
        ``(n,)`` bool: the coordinate is coded by the uniform scalar code, not by the trellis
        (so are the coordinates of one-coordinate trellis classes).
    L : int
        State bits of the trellis (a class of ``n_c`` coordinates uses ``min(L, n_c·b)``).
    """

    mean: np.ndarray
    std: np.ndarray
    bits: np.ndarray
    gain: np.ndarray
    clip: np.ndarray
    scalar: np.ndarray
    L: int = DEFAULT_L

    def __post_init__(self) -> None:
        n = np.asarray(self.bits).size
        shapes = [np.shape(a) for a in (self.mean, self.std, self.bits, self.clip, self.scalar)]
        if any(s != (n,) for s in shapes) or np.shape(self.gain) != (MAX_BITS + 1,):
            raise ValueError(
                f"mean, std, bits, clip, scalar must be ({n},) and gain ({MAX_BITS + 1},)"
            )
        b = np.asarray(self.bits)
        if b.dtype.kind not in "iu" or (n and (b.min() < 0 or b.max() > MAX_BITS)):
            raise ValueError(f"bits must be integers in [0, {MAX_BITS}]")
        if np.asarray(self.scalar).dtype != bool:
            raise ValueError("scalar must be a bool array")
        check_int(self.L, "L", MAX_BITS + 1, L_MAX)

    @property
    def bits_per_entry(self) -> float:
        """Measured rate: stored bits per entry (``mean(bits)``, no side information)."""
        return float(np.mean(self.bits))

    @property
    def classes(self) -> list[tuple[int, np.ndarray, int]]:
        """``(b, coordinates, L_c)`` of every class of ``b > 0`` bits: the trellis classes
        (``L_c = min(L, n_c·b)`` state bits, at least 2 coordinates) by increasing ``b``, then
        the coordinates of the uniform code by increasing ``b`` (``L_c = 0``)."""
        b = np.asarray(self.bits)
        sc = np.asarray(self.scalar).copy()
        trellis = []
        for k in np.unique(b[~sc]):
            idx = np.flatnonzero((b == k) & ~sc)
            if k > 0 and idx.size >= 2:
                trellis.append((int(k), idx, min(self.L, idx.size * int(k))))
            else:
                sc[idx] = True
        uniform = [(int(k), np.flatnonzero((b == k) & sc), 0) for k in np.unique(b[sc]) if k > 0]
        return trellis + uniform

    @classmethod
    def fit(
        cls,
        x: Any,
        weights: Any,
        rate: float,
        *,
        L: int = DEFAULT_L,
        scalar_from: int = SCALAR_FROM,
        max_bits: int = MAX_BITS,
    ) -> TrellisChannelCode:
        """Fit the code to calibration data ``x`` at ``rate`` bits per entry.

        The bits are waterfilled on the weighted error curves of the coordinates, measured on
        ``x``: below ``scalar_from`` bits the lesser of the trellis's (all coordinates of a
        token as one row, :data:`FIT_TOKENS` tokens at most) and the uniform code's (best
        clipping range per coordinate), which also picks the coordinate's code; the uniform
        code's from there on.

        Parameters
        ----------
        x : array_like
            ``[tokens ≥ 2, n]`` calibration data (finite).
        weights : array_like
            ``(n,)`` weight of each coordinate's squared error (≥ 0).
        rate : float
            Mean bits per coordinate (the budget is ``⌊n·rate⌋`` bits), 0 to ``max_bits``.
        L : int
            State bits of the trellis, ``max_bits < L ≤`` :data:`~mmquant.trellis.quantizer.L_MAX`.
        scalar_from : int
            First bit count coded by the uniform scalar code (``MAX_BITS + 1``: none).
        max_bits : int
            Most bits of one coordinate (≤ :data:`MAX_BITS`).
        """
        a = _calibration(x)
        mb = check_int(max_bits, "max_bits", 1, MAX_BITS)
        r = check_float(rate, "rate", 0.0, hi=float(mb))
        L = check_int(L, "L", MAX_BITS + 1, L_MAX)
        sf = check_int(scalar_from, "scalar_from", 1, MAX_BITS + 1)
        n = a.shape[1]
        w = np.asarray(weights, np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be {n} finite values ≥ 0, got shape {w.shape}")
        cv = CodeCurves.measure(a, L=L, scalar_from=sf, max_bits=mb)
        (bits,) = allocate_bits([cv.curve], [w * cv.std**2], int(n * r + 1e-9))
        return cv.code(bits)

    @classmethod
    def from_bits(
        cls, x: Any, bits: Any, *, L: int = DEFAULT_L, scalar_from: int = SCALAR_FROM
    ) -> TrellisChannelCode:
        """The code with the allocation ``bits`` (``(n,)`` integers) fitted to ``x``; the
        coordinates of ``≥ scalar_from`` bits use the uniform code."""
        a = _calibration(x)
        b = np.asarray(bits)
        if b.shape != (a.shape[1],) or b.dtype.kind not in "iu":
            raise ValueError(f"bits must be {a.shape[1]} integers, got {b.shape} {b.dtype}")
        b = b.astype(np.int64)
        if b.size and (b.min() < 0 or b.max() > MAX_BITS):
            raise ValueError(f"bits must be integers in [0, {MAX_BITS}]")
        mu, sd, v = _normalise(a)
        _, _, clip = ChannelCode.curves(v, MAX_BITS)
        sf = check_int(scalar_from, "scalar_from", 1, MAX_BITS + 1)
        code = cls(mu, sd, b, np.ones(MAX_BITS + 1), clip[b, np.arange(b.size)], b >= sf, L)
        return code._fit_gains(v)

    def _fit_gains(self, v: np.ndarray) -> TrellisChannelCode:
        """This code with the least-squares gain of each trellis class on normalised data."""
        gain = np.ones(MAX_BITS + 1)
        for b, idx, L in self.classes:
            if not L:
                continue
            z = v[:, idx]
            t = class_table(b, L)
            zh = _decode(_encode(z, t, L, b), t, L, b).astype(np.float64)
            den = float(np.sum(zh * zh))
            gain[b] = max(float(np.sum(zh * z)), 0.0) / den if den > 0 else 0.0
        return replace(self, gain=gain)

    def _check(self, x: Any) -> np.ndarray:
        a = np.asarray(x)
        if a.ndim != 2 or a.shape[1] != self.bits.size:
            raise ValueError(f"expected [tokens, {self.bits.size}], got shape {a.shape}")
        if a.dtype.kind not in "fiu":
            raise TypeError(f"expected real numbers, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise ValueError("input contains NaN or Inf")
        return a

    def encode(self, x: Any) -> TrellisRecord:
        """The symbols of every class of every token of ``x`` (``[tokens, n]``)."""
        a = self._check(x)
        v = (a.astype(np.float64) - self.mean) / self.std
        out = []
        for b, idx, L in self.classes:
            z = v[:, idx]
            if not L:
                out.append(_uniform(z, self.clip[idx], b)[0])
                continue
            out.append(_encode(z, class_table(b, L), L, b))
        return TrellisRecord(tokens=int(a.shape[0]), symbols=tuple(out))

    def decode(self, record: TrellisRecord) -> np.ndarray:
        """``[tokens, n]`` float64 reconstruction of ``record`` (checked against the code)."""
        cl = self.classes
        if not isinstance(record, TrellisRecord) or len(record.symbols) != len(cl):
            raise ValueError(f"record must be a TrellisRecord with {len(cl)} symbol arrays")
        t_n = int(record.tokens)
        if t_n < 0:
            raise ValueError(f"record.tokens must be ≥ 0, got {t_n}")
        syms = []
        for b, idx, _ in cl:  # every size checked before anything is allocated or decoded
            u = np.asarray(record.symbols[len(syms)])
            if u.dtype != np.uint8 or u.shape != (t_n, idx.size):
                raise ValueError(f"symbols of the {b}-bit class must be uint8 {(t_n, idx.size)}")
            if u.size and int(u.max()) >= 1 << b:
                raise ValueError(f"symbols of the {b}-bit class must be < {1 << b}")
            syms.append(u)
        if not cl and t_n * self.bits.size > 1 << 26:  # no symbols tie tokens to the input
            raise ValueError(f"record.tokens {t_n} too large for a code without coded coordinates")
        v = np.zeros((t_n, self.bits.size))
        for (b, idx, L), u in zip(cl, syms):
            if not L:
                v[:, idx] = _levels(u, self.clip[idx], b)
                continue
            zh = _decode(np.ascontiguousarray(u), class_table(b, L), L, b)
            v[:, idx] = self.gain[b] * zh.astype(np.float64)
        return self.mean + self.std * v

    def quantize(self, x: Any) -> np.ndarray:
        """Code and decode ``x`` (``[tokens, n]``), in its dtype."""
        a = self._check(x)
        return self.decode(self.encode(a)).astype(a.dtype, copy=False)
