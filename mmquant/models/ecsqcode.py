"""Entropy-coded scalar codes (ECSQ) for activations and queries/keys, with measured rates.

:class:`ECSQCode` codes each coordinate ``j`` of a token (a row of ``[tokens, n]``) with a
uniform scalar quantizer of step ``Δ_j = Δ0/√w_j`` (``w_j`` the coordinate's error weight):
every coordinate gets the same weighted distortion, the continuous form of reverse waterfilling
(coordinates below the water level fall into the zero bin and cost next to nothing). One ``Δ0``
is searched so that the rate estimated on held-out calibration tokens meets the target.

The indices are entropy coded with a **static** probability model per coordinate, part of the
code like a weight: a table of integer frequencies (``PRECISION = 24`` bits, each symbol ≥ 1)
over the calibration support widened by a Laplace tail component (:func:`_tables`: unseen
tokens spread wider than the calibration ones) plus an escape symbol. A value outside the support
is coded as the escape, one side bit, a 5-bit length ``L`` and ``L`` raw bits of the distance to
the support (:func:`escape_bits`): any finite value is codable, at a counted cost (indices
saturate at ``±MAX_INDEX`` steps).

Rates are real: :meth:`ECSQCode.quantize` adds to the code's :class:`RateMeter` the exact
information ``Σ (PRECISION − log2 f)`` of the coded symbols under the stored frequencies, the
escape payloads, and :data:`MESSAGE_BITS` per message (the rANS coder's final state): a message
is ``block`` tokens (``block=1``: every token its own stream; ``0``: one per call).
:meth:`ECSQCode.encode` writes the real rANS streams with ``constriction`` (the frequency table
handed to ``constriction`` as ``f − 1`` on ``2^24 − size`` leaves exactly ``f``) and
:meth:`ECSQCode.decode` reads them back; the tests check that every stream is at most the counted
length and within :data:`MESSAGE_BITS` of the information.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmquant.validation import check_float, check_int

__all__ = [
    "ECSQCode",
    "RateMeter",
    "MESSAGE_BITS",
    "PRECISION",
    "escape_bits",
    "fit_joint",
    "measured_rate",
]

#: Bits of the fixed-point probabilities (constriction's default stack coder).
PRECISION = 24
_TOTAL = 1 << PRECISION
#: Counted overhead of one rANS message: its final 64-bit state.
MESSAGE_BITS = 64
#: Largest ``|index|`` a frequency table covers (beyond: escapes).
MAX_SUPPORT = 2048
#: Indices saturate here (the escape payload stays below 2^23).
MAX_INDEX = 1 << 22
#: Bits of the escape's length field.
LENGTH_BITS = 5
#: Pseudo-count of every symbol inside the support (the escape gets 1).
ALPHA = 0.5
#: Mass of the wide tail component of the frequency tables (fraction of the tokens) and its
#: width in spreads of the calibration indices (:func:`_tables`).
TAIL_MASS = 1.0 / 32
TAIL_WIDTH = 3.0
#: Bisection steps on ``log2 Δ0`` (after a bracket of width 2).
SEARCH_STEPS = 16
#: Most entries one :meth:`ECSQCode.decode` call produces (a bound on its memory, 512 MiB).
MAX_DECODE_ENTRIES = 1 << 26


class RateMeter:
    """Bits and entries coded so far by one code (reset it before an evaluation)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything counted."""
        self.bits = 0.0
        self.entries = 0
        self.tokens = 0
        self.messages = 0
        self.escapes = 0

    def add(self, bits: float, entries: int, tokens: int, messages: int, escapes: int = 0) -> None:
        """Count one coded batch."""
        self.escapes += int(escapes)
        self.bits += float(bits)
        self.entries += int(entries)
        self.tokens += int(tokens)
        self.messages += int(messages)

    @property
    def bits_per_entry(self) -> float:
        """Measured bits per coded entry (NaN before any)."""
        return self.bits / self.entries if self.entries else float("nan")


def escape_bits(distance: Any) -> np.ndarray:
    """Payload bits after an escape: side bit, ``LENGTH_BITS`` and ``⌊log2(d + 1)⌋`` raw bits.

    ``distance`` (``d ≥ 0``) is how many steps the index lies beyond the support.
    """
    d = np.asarray(distance, np.int64)
    _, e = np.frexp((d + 1).astype(np.float64))
    return 1 + LENGTH_BITS + (e.astype(np.int64) - 1)


def _saturate(v: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(v, -MAX_INDEX, MAX_INDEX)).astype(np.int64)


def _first_max(g: np.ndarray, base: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Flat position of the first largest entry of each segment."""
    top = np.maximum.reduceat(g, base)
    hit = np.flatnonzero(g == np.repeat(top, size))
    owner = np.repeat(np.arange(size.size), size)[hit]
    return hit[np.unique(owner, return_index=True)[1]]


@dataclass(frozen=True)
class _Tables:
    lo: np.ndarray  # first in-support index per coordinate
    width: np.ndarray  # symbols in the support (the escape is symbol ``width``)
    base: np.ndarray  # offset of each coordinate's alphabet in the flat tables
    freq: np.ndarray  # integer frequencies, each ≥ 1, summing to 2^PRECISION per coordinate

    @property
    def cost(self) -> np.ndarray:
        return PRECISION - np.log2(self.freq.astype(np.float64))

    def positions(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inside = (k >= self.lo) & (k < self.lo + self.width)
        pos = np.where(inside, self.base + k - self.lo, self.base + self.width)
        return pos, inside

    def token_bits(self, k: np.ndarray, cost: np.ndarray | None = None) -> np.ndarray:
        """Exact information of each token (row of indices ``k``), escapes included."""
        pos, inside = self.positions(k)
        bits = (self.cost if cost is None else cost)[pos]
        if not inside.all():
            hi = self.lo + self.width - 1
            d = np.where(k > hi, k - hi - 1, self.lo - 1 - k)
            bits = bits + np.where(inside, 0, escape_bits(np.maximum(d, 0)))
        return bits.sum(axis=1)


def _tables(k: np.ndarray, tail: float = TAIL_MASS) -> _Tables:
    """Frequency tables of index matrix ``k`` (``[tokens, n]``).

    Counts on the observed range plus ``ALPHA``, and a wide tail component: a discretised
    Laplace around the column's mean index with ``TAIL_WIDTH`` times its spread and total mass
    ``tail`` (a fraction of the tokens), over a support widened by ``3·TAIL_WIDTH`` spreads on
    each side, so that data wider than the calibration tokens cost a few bits, not escapes.
    """
    t = k.shape[0]
    kmin, kmax = k.min(axis=0), k.max(axis=0)
    centre = k.mean(axis=0)
    spread = np.maximum(k.std(axis=0), 0.5)
    ext = np.ceil(3.0 * TAIL_WIDTH * spread).astype(np.int64) if tail > 0 else 0
    lo = np.clip(kmin - ext, -MAX_SUPPORT, MAX_SUPPORT)
    hi = np.clip(kmax + ext, -MAX_SUPPORT, MAX_SUPPORT)
    width = hi - lo + 1
    size = width + 1
    base = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    tab = _Tables(lo, width, base, np.zeros(0, np.int64))
    pos, _ = tab.positions(k)
    g = np.bincount(pos.reshape(-1), minlength=int(size.sum())).astype(np.float64)
    sym = np.arange(g.size) - np.repeat(base, size) + np.repeat(lo, size)  # index of each slot
    seen = (sym >= np.repeat(kmin, size)) & (sym <= np.repeat(kmax, size))
    g += np.where(seen, ALPHA, 0.0)
    if tail > 0:
        b = np.repeat(TAIL_WIDTH * spread / np.sqrt(2.0), size)
        lap = np.exp(-np.abs(sym - np.repeat(centre, size)) / b)
        esc = base + width
        lap[esc] = 0.0
        g += tail * t * lap / np.repeat(np.add.reduceat(lap, base), size)
    g[base + width] = np.maximum(g[base + width], 1.0)
    scale = np.repeat((_TOTAL - size) / np.add.reduceat(g, base), size)
    f = np.floor(g * scale).astype(np.int64) + 1
    f[_first_max(g, base, size)] += _TOTAL - np.add.reduceat(f, base)
    if f.min() < 1:  # pragma: no cover - the remainder is ≥ 0 up to rounding
        raise ArithmeticError("frequency table lost a symbol")
    return _Tables(lo, width, base, f)


@dataclass(frozen=True, eq=False)
class ECSQCode:
    """Static entropy-coded uniform scalar code per coordinate (module docstring).

    Build it with :meth:`fit` (or :func:`fit_joint` for codes sharing one ``Δ0``).

    Attributes
    ----------
    mean, step : numpy.ndarray
        Per coordinate: centre and step of the uniform grid.
    tables : _Tables
        Support, alphabet offsets and integer frequencies (the static probability model).
    recon : numpy.ndarray
        Reconstruction of each support symbol in steps (bin centroids on the calibration data).
    block : int
        Tokens per rANS message (0: one message per :meth:`quantize` call).
    fit_rate : float
        Rate estimated at fit time on held-out calibration tokens (bits per entry, messages
        included).
    meter : RateMeter
        What :meth:`quantize` has coded so far.
    """

    mean: np.ndarray
    step: np.ndarray
    tables: _Tables = field(repr=False)
    recon: np.ndarray = field(repr=False)
    block: int = 1
    fit_rate: float = float("nan")
    meter: RateMeter = field(default_factory=RateMeter, repr=False)

    @property
    def bits_per_entry(self) -> float:
        """Measured rate of what was coded (the fit-time estimate before any coding)."""
        m = self.meter
        return m.bits_per_entry if m.entries else self.fit_rate

    def messages(self, tokens: int) -> int:
        """rANS messages for ``tokens`` tokens."""
        if tokens <= 0:
            return 0
        return 1 if self.block == 0 else -(-tokens // self.block)

    def _indices(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(x)
        n = self.mean.size
        if a.ndim != 2 or a.shape[1] != n:
            raise ValueError(f"expected [tokens, {n}], got shape {a.shape}")
        if a.dtype.kind not in "fiu":
            raise TypeError(f"expected a real array, got dtype {a.dtype}")
        v = (a.astype(np.float64) - self.mean) / self.step
        if not np.all(np.isfinite(v)):
            raise ValueError("input contains NaN or Inf")
        return a, _saturate(v)

    def _decode_indices(self, k: np.ndarray) -> np.ndarray:
        pos, inside = self.tables.positions(k)
        return np.where(inside, self.recon[pos], k) * self.step + self.mean

    def code_length(self, x: Any) -> np.ndarray:
        """Exact information of each token under the static model, escapes included (bits)."""
        _, k = self._indices(x)
        return self.tables.token_bits(k)

    def quantize(self, x: Any) -> np.ndarray:
        """Code and decode ``x`` (``[tokens, n]``), in its dtype; counts the bits in :attr:`meter`."""
        a, k = self._indices(x)
        t = a.shape[0]
        info = float(self.tables.token_bits(k).sum())
        m = self.messages(t)
        _, inside = self.tables.positions(k)
        self.meter.add(info + MESSAGE_BITS * m, a.size, t, m, int(inside.size - inside.sum()))
        return self._decode_indices(k).astype(a.dtype if a.dtype.kind == "f" else np.float64)

    def take(self, cols: Any) -> ECSQCode:
        """The code of the coordinates ``cols`` (a slice or index array), with its own meter."""
        idx = np.arange(self.mean.size)[cols]
        t = self.tables
        size = t.width + 1
        flat = np.concatenate([np.arange(t.base[j], t.base[j] + size[j]) for j in idx])
        nb = np.concatenate([[0], np.cumsum(size[idx])[:-1]]).astype(np.int64)
        sub = _Tables(t.lo[idx], t.width[idx], nb, t.freq[flat])
        return ECSQCode(
            self.mean[idx], self.step[idx], sub, self.recon[flat], self.block, self.fit_rate
        )

    # -- real streams -------------------------------------------------------------------------

    def _models(self) -> list:
        from mmquant.entropy import _constriction

        c = _constriction()
        t = self.tables
        return [
            c.stream.model.Categorical(
                (t.freq[b : b + w + 1] - 1).astype(np.float64), perfect=False
            )
            for b, w in zip(t.base, t.width)
        ]

    def encode(self, x: Any) -> list[np.ndarray]:
        """Real rANS streams (``uint32`` words), one per message of :attr:`block` tokens."""
        from mmquant.entropy import _constriction

        c = _constriction()
        _, k = self._indices(x)
        t = self.tables
        hi = t.lo + t.width - 1
        models = self._models()
        uni = c.stream.model.Uniform
        rows = k.shape[0] if self.block == 0 else self.block
        out = []
        for r0 in range(0, k.shape[0], max(rows, 1)):
            kk = k[r0 : r0 + rows]
            pos, inside = t.positions(kk)
            coder = c.stream.stack.AnsCoder()
            for j in range(k.shape[1] - 1, -1, -1):  # decoded coordinate by coordinate
                esc = np.flatnonzero(~inside[:, j])
                if esc.size:
                    kj = kk[esc, j]
                    side = (kj > hi[j]).astype(np.int32)
                    d = np.where(side == 1, kj - hi[j] - 1, t.lo[j] - 1 - kj)
                    length = escape_bits(d) - 1 - LENGTH_BITS
                    for dd, ll in zip(d[::-1], length[::-1]):
                        if ll > 0:
                            raw = np.array([int(dd) + 1 - (1 << int(ll))], np.int32)
                            coder.encode_reverse(raw, uni(1 << int(ll)))
                    coder.encode_reverse(length.astype(np.int32), uni(1 << LENGTH_BITS))
                    coder.encode_reverse(side, uni(2))
                sym = (pos[:, j] - t.base[j]).astype(np.int32)
                coder.encode_reverse(sym, models[j])
            out.append(np.asarray(coder.get_compressed(), np.uint32))
        return out

    def decode(self, streams: Any, tokens: int) -> np.ndarray:
        """Decode :meth:`encode`'s streams of ``tokens`` tokens (float64, as :meth:`quantize`)."""
        from mmquant.entropy import _constriction

        c = _constriction()
        tokens = check_int(tokens, "tokens", 0, 1 << 30)
        if tokens * self.mean.size > MAX_DECODE_ENTRIES:
            raise ValueError(
                f"{tokens} tokens of {self.mean.size} entries exceed the decoder's limit of "
                f"{MAX_DECODE_ENTRIES} entries per call: decode fewer tokens at a time"
            )
        streams = list(streams)
        if len(streams) != self.messages(tokens):
            raise ValueError(f"{tokens} tokens need {self.messages(tokens)} streams")
        t = self.tables
        hi = t.lo + t.width - 1
        models = self._models()
        uni = c.stream.model.Uniform
        rows = tokens if self.block == 0 else self.block
        k = np.zeros((tokens, self.mean.size), np.int64)
        for m, words in enumerate(streams):
            w = np.asarray(words)
            if w.ndim != 1 or w.dtype != np.uint32:
                raise ValueError("each stream must be a 1-D uint32 array")
            r0, r1 = m * rows, min((m + 1) * rows, tokens)
            try:
                dec = c.stream.stack.AnsCoder(w)
                for j in range(k.shape[1]):
                    sym = dec.decode(models[j], r1 - r0).astype(np.int64)
                    kj = t.lo[j] + sym
                    esc = np.flatnonzero(sym == t.width[j])
                    if esc.size:
                        side = dec.decode(uni(2), esc.size)
                        length = dec.decode(uni(1 << LENGTH_BITS), esc.size)
                        for e, s, ll in zip(esc, side, length):
                            d = (1 << int(ll)) - 1
                            if ll > 0:
                                d += int(dec.decode(uni(1 << int(ll)), 1)[0])
                            kj[e] = hi[j] + 1 + d if s else t.lo[j] - 1 - d
                    k[r0:r1, j] = kj
                if not dec.is_empty():
                    raise ValueError("the stream does not end after the last symbol")
            except (KeyError, RuntimeError, AssertionError, ValueError, IndexError) as exc:
                raise ValueError(f"corrupt ECSQ stream {m}: {exc}") from None
        return self._decode_indices(k)

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        x: Any,
        weights: Any,
        rate: float,
        *,
        block: int = 1,
        centroids: bool = True,
        message_width: int | None = None,
    ) -> ECSQCode:
        """Fit the code on calibration data ``x`` at ``rate`` bits per entry.

        Parameters
        ----------
        x : array_like
            ``[tokens ≥ 4, n]`` calibration data.
        weights : array_like
            ``(n,)`` weight ``w_j ≥ 0`` of each coordinate's squared error.
        rate : float
            Bits per entry, messages included: the rate estimated on held-out calibration
            tokens (tables fitted on one half, coded on the other, both ways) is at most this.
        block : int
            Tokens per rANS message (0: one message per call; its overhead is then not reserved).
        centroids : bool
            Reconstruct at the calibration centroid of each bin (False: the bin centre).
        message_width : int, optional
            Entries per token of one message (default ``n``; :func:`fit_joint` passes the width
            of each sub-code).
        """
        return fit_joint(
            [x], [weights], rate, block=block, centroids=centroids, message_width=message_width
        )[0]


def _check_data(x: Any, w: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] < 4 or a.shape[1] < 1:
        raise ValueError(f"x[{k}] must be [tokens ≥ 4, n ≥ 1], got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"x[{k}] must be real, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"x[{k}] contains NaN or Inf")
    wt = np.asarray(w, np.float64)
    if wt.shape != (a.shape[1],) or not np.all(np.isfinite(wt)) or np.any(wt < 0):
        raise ValueError(f"weights[{k}] must be {a.shape[1]} finite values ≥ 0")
    return a, wt


def fit_joint(
    xs: Any,
    weights: Any,
    rate: float,
    *,
    block: int = 1,
    centroids: bool = True,
    message_width: int | None = None,
) -> list[ECSQCode]:
    """:class:`ECSQCode` s for several data sets (same tokens) sharing one ``Δ0``.

    The codes minimise ``Σ_k Σ_j w_kj e_kj²`` over all of them at a mean ``rate`` over all their
    entries (e.g. the queries and keys of every head: one water level for the whole model).
    Parameters as :meth:`ECSQCode.fit`; ``message_width`` defaults to each code's width.
    """
    xs, weights = list(xs), list(weights)
    if not xs or len(xs) != len(weights):
        raise ValueError("need as many weight vectors as data sets, at least one")
    pairs = [_check_data(x, w, k) for k, (x, w) in enumerate(zip(xs, weights))]
    tokens = pairs[0][0].shape[0]
    if any(a.shape[0] != tokens for a, _ in pairs):
        raise ValueError("all data sets must have the same number of tokens")
    block = check_int(block, "block", 0, 1 << 20)
    widths = [a.shape[1] for a, _ in pairs]
    a = np.concatenate([p[0] for p in pairs], axis=1)
    w = np.concatenate([p[1] for p in pairs])
    n = a.shape[1]
    mw = np.repeat(widths, widths) if message_width is None else np.full(n, message_width)
    reserve = 0.0 if block == 0 else float(np.mean(MESSAGE_BITS / (block * mw)))
    r = check_float(rate, "rate", reserve, 16.0, lo_open=True) - reserve
    mean = a.mean(axis=0)
    z = a - mean
    amax = np.abs(z).max(axis=0)
    cap = 4.0 * np.where(amax > 0, amax, 1.0)  # a step this wide codes everything as 0
    live = w > 0
    half = tokens // 2

    def steps(log_d0: float) -> np.ndarray:
        d = np.exp2(log_d0) / np.sqrt(np.where(live, w, 1.0))
        return np.where(live, np.minimum(d, cap), cap)

    def held_out_rate(log_d0: float) -> float:
        k = _saturate(z / steps(log_d0))
        bits = 0.0
        for fit_rows, test_rows in (
            (slice(0, half), slice(half, None)),
            (slice(half, None), slice(0, half)),
        ):
            bits += float(_tables(k[fit_rows]).token_bits(k[test_rows]).sum())
        return bits / k.size

    # bracket log2 Δ0 from the high-rate guess (Gaussian ECSQ: R_j ≈ log2(σ_j√(2πe)/Δ_j))
    sd = np.sqrt(np.mean(z * z, axis=0)) + 1e-300
    guess = float(np.mean(np.log2(sd[live] * np.sqrt(2 * np.pi * np.e * w[live])))) - r
    guess = guess if np.any(live) else 0.0
    lo_d, hi_d = guess - 1.0, guess + 1.0
    for _ in range(64):
        if held_out_rate(hi_d) <= r:
            break
        lo_d, hi_d = hi_d, hi_d + 2.0
    for _ in range(64):
        if held_out_rate(lo_d) > r:
            break
        lo_d, hi_d = lo_d - 2.0, lo_d
    for _ in range(SEARCH_STEPS):  # the held-out rate falls as Δ0 grows
        mid = 0.5 * (lo_d + hi_d)
        if held_out_rate(mid) <= r:
            hi_d = mid
        else:
            lo_d = mid
    step = steps(hi_d)
    est = held_out_rate(hi_d) + reserve
    k = _saturate(z / step)
    tab = _tables(k)
    pos, _ = tab.positions(k)
    recon = np.concatenate(
        [np.arange(lo, lo + wd + 1, dtype=np.float64) for lo, wd in zip(tab.lo, tab.width)]
    )
    if centroids:
        v = (z / step).reshape(-1)
        cnt = np.bincount(pos.reshape(-1), minlength=recon.size)
        tot = np.bincount(pos.reshape(-1), weights=v, minlength=recon.size)
        recon = np.where(cnt > 0, tot / np.maximum(cnt, 1), recon)
    whole = ECSQCode(mean, step, tab, recon, block, est)
    out, start = [], 0
    for wd in widths:
        out.append(whole.take(slice(start, start + wd)) if len(widths) > 1 else whole)
        start += wd
    return out


def measured_rate(codes: Any) -> tuple[float, float, int]:
    """``(mean, max, entries)`` of the measured bits per entry of ``codes`` (each counted once).

    Accepts :class:`ECSQCode` s and codes wrapping one as ``inner`` with ``scale_bits`` per
    token (the token codes of :mod:`mmquant.models.actcodes`). ``mean`` is over all entries.
    """
    seen: set[int] = set()
    bits = 0.0
    entries = 0
    worst = float("nan")
    for code in codes:
        if id(code) in seen:
            continue
        seen.add(id(code))
        inner = getattr(code, "inner", code)
        m = getattr(inner, "meter", None)
        if m is None or not m.entries:
            continue
        b = m.bits + float(getattr(code, "scale_bits", 0)) * m.tokens
        bits += b
        entries += m.entries
        worst = b / m.entries if not worst >= b / m.entries else worst
    return (bits / entries if entries else float("nan")), worst, entries


def reset_meters(codes: Any) -> None:
    """Reset the meters of ``codes`` (and of their ``inner`` codes)."""
    for code in codes:
        m = getattr(getattr(code, "inner", code), "meter", None)
        if m is not None:
            m.reset()
