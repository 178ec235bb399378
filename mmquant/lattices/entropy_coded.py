"""Entropy-coded (dithered) E8 lattice quantizer: no coarse lattice, a real rANS bitstream.

After the same preprocessing as the Voronoi codes (optional centring, seeded randomized Hadamard
rotation, row RMS normalisation; :func:`mmquant.lattices.rows.prepare_rows`), every 8-block ``z``
is quantized to the scaled lattice βE8 with a subtractive dither ``u`` (uniform over the Voronoi
cell of E8, from a stored 32-bit seed)::

    λ = Q_E8(z/β − u),     ẑ = α·β·(λ + u),     α = ⟨z, β(λ+u)⟩ / ‖β(λ+u)‖²  (MMSE, float32)

The lattice point is written without redundancy as 9 integers per block: the coset bit
``s ∈ {0, 1}`` (λ ∈ D8 + s/2), ``m_i = λ_i − s/2`` for i < 7, and ``t = (m_7 − p)/2`` where
``p = (Σ_{i<7} m_i) mod 2`` (the parity of ``Σ m`` is even in both cosets, so ``m_7 ≡ p``). The nine
streams are entropy-coded by :func:`mmquant.entropy.encode_integers` (one histogram model per
stream, model tables counted as side information); the rate is the bitstream length plus side
information, and the plug-in entropy of the symbols is reported in ``stats``.

The step β is set for a target rate: start from the high-rate formula
``R ≈ h(N(0,1)) − log2 β = ½·log2(2πe) − log2 β`` (cell volume β^8), then secant steps on log2 β
until the empirical entropy of the symbols is within 0.001 bit of the target (β stored as float32).

**When the target cannot be met** the encoder still returns a valid record (its measured rate is
always reported truthfully), but says so: if the plug-in entropy of the codes differs from ``rate``
by more than :data:`RATE_TOLERANCE` (0.05 bit/entry), it emits a :class:`RateNotMetWarning` naming
the achieved entropy and the reason, and the record's ``stats`` carry ``target_rate``,
``rate_met`` (1.0 or 0.0) and ``entropy_bits_per_entry``. The usual reasons: too few blocks (the
empirical entropy of ``N`` blocks is at most ``9·log2(N)/8`` bits/entry: one 8-entry row has 0),
all-zero or constant rows, or a step β pinned at the ±4-octave limit of the search. To make it an
error: ``warnings.simplefilter("error", RateNotMetWarning)``.

At high rate the loss against the Shannon bound is the granular loss of E8,
``½·log2(2πe·G(E8)) = 0.146 bit`` (0.879 dB), plus the (small) cost of the model tables.

References
----------
.. [1] O. Ordentlich, Y. Polyanskiy, "Optimal quantization for matrix multiplication",
   arXiv:2410.13780.
.. [2] R. Zamir, M. Feder, "On universal quantization by randomized uniform/lattice quantizers",
   IEEE Trans. Inf. Theory 38 (1992).
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.entropy import check_histograms, decode_integers, empirical_entropy, encode_integers
from mmquant.lattices.blockcode import dither
from mmquant.lattices.chunks import pairwise_blocks
from mmquant.lattices.closest import closest_e8, lattice
from mmquant.lattices.rows import finish_rows, prepare_rows
from mmquant.layout import MAX_ENTRIES_PER_BYTE, Layout, side_array
from mmquant.validation import check_float, check_int

__all__ = [
    "E8EntropyCoded",
    "RATE_MAX",
    "RATE_TOLERANCE",
    "TABLE_MIN",
    "RateNotMetWarning",
    "e8_to_symbols",
    "symbols_to_e8",
]

#: Largest |entropy − rate| (bits/entry) accepted silently by ``e8ec``.
RATE_TOLERANCE = 0.05

#: Largest target rate (bits per entry). β is calibrated on the plug-in entropy of at most
#: 32768 blocks, i.e. at most 15 bits per symbol stream: near 14 bits per entry the estimate
#: saturates, the secant runs to its lower clamp (4 octaves below the high-rate β) and the
#: symbols and model tables become huge (measured on 1024×2048 N(0, 1): rate 14 gives 18.2
#: bits per entry, rate 16 tables of 1.8·10^7 values).
RATE_MAX = 12.0

#: The model tables (one entry per symbol value of each of the 9 streams) may hold
#: ``max(TABLE_MIN, entries)`` values in all: at most 2 bytes of side information per entry of
#: the input, or 128 KiB. A higher rate on a small input is refused rather than stored.
TABLE_MIN = 1 << 16

_CHUNK = 1 << 13  # blocks per step of symbols_to_e8


class RateNotMetWarning(UserWarning):
    """``e8ec`` could not bring the entropy of its codes to the requested rate."""


def e8_to_symbols(lam: np.ndarray) -> np.ndarray:
    """(N, 8) E8 points → (N, 9) int64 symbols ``[s, m_0..m_6, t]`` (see module docstring)."""
    s = (lam[:, 0] != np.floor(lam[:, 0])).astype(np.int64)
    m = (lam - 0.5 * s[:, None]).astype(np.int64)
    p = np.sum(m[:, :7], axis=1) % 2
    t = (m[:, 7] - p) // 2
    return np.concatenate([s[:, None], m[:, :7], t[:, None]], axis=1)


def symbols_to_e8(sym: np.ndarray) -> np.ndarray:
    """Inverse of :func:`e8_to_symbols` (float64 (N, 8) E8 points)."""
    sym = np.asarray(sym)
    out = np.empty((sym.shape[0], 8))
    for b0 in range(0, sym.shape[0], _CHUNK):  # per block: a chunk at a time
        c = sym[b0 : b0 + _CHUNK].astype(np.int64)
        s = c[:, 0]
        m7 = 2 * c[:, 8] + np.sum(c[:, 1:8], axis=1) % 2
        m = np.concatenate([c[:, 1:8], m7[:, None]], axis=1).astype(np.float64)
        out[b0 : b0 + _CHUNK] = m + 0.5 * s[:, None]
    return out


def _entropy_bits(sym: np.ndarray) -> float:
    """Σ over the 9 symbol streams of their plug-in entropies, in bits per block."""
    return float(sum(empirical_entropy(sym[:, j]) for j in range(sym.shape[1])))


@register("e8ec")
@dataclass(frozen=True)
class E8EntropyCoded(Quantizer):
    """Dithered E8 lattice quantizer with entropy-coded indices (real rANS bitstream).

    Parameters
    ----------
    rate : float
        Target entropy of the codes in bits per entry, 0.25 to :data:`RATE_MAX` (the measured
        rate adds the model tables and the per-row norms). The symbol range, hence the model
        tables, grows as ``2^rate``: an encode whose tables would exceed
        ``max(TABLE_MIN, entries)`` values raises ``ValueError`` (rate 12 needs about 10^6
        entries, rate 10 fits 64×256).
    dither : bool
        Subtractive dither uniform over the E8 cell (seed stored as side information).
    rotate, center, mmse : bool
        As for :class:`mmquant.lattices.voronoi.E8Voronoi`.
    seed : int
        Seed of the rotation (and, mixed with a CRC of the data, of the dither).
    """

    description: ClassVar[str] = "entropy-coded dithered E8 lattice (rANS), Hadamard rotation"

    rate: float = 4.0
    dither: bool = True
    rotate: bool = True
    center: bool = False
    mmse: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_float(self.rate, "rate", lo=0.25, hi=RATE_MAX)
        check_int(self.seed, "seed", lo=0, hi=2**32 - 1)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """4 bits per entry."""
        return [cls(rate=4.0)]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """The configuration at ``rate`` (clamped to 0.25 … RATE_MAX)."""
        return [cls(rate=float(min(max(rate, 0.25), RATE_MAX)))]

    def nominal_rate(self, n: int | None = None) -> float:
        """The target entropy ``rate`` (the measured rate adds the model tables)."""
        return float(self.rate)

    def _calibrate(self, z: np.ndarray, u: np.ndarray) -> float:
        """β whose code entropy is ``rate`` (secant on log2 β, on at most 32768 blocks)."""
        sub = slice(0, min(z.shape[0], 32768))
        zs, us = z[sub], u[sub]

        def h(logb: float) -> float:
            b = 2.0**logb
            return _entropy_bits(e8_to_symbols(closest_e8(zs / b - us))) / 8.0 - self.rate

        # Rows are normalised to unit RMS, so the high-rate value 2^{½log2(2πe) − R} is within a
        # few octaves of the answer; the iterates are clamped to ±4 octaves around it. Without
        # the clamp, a handful of blocks (whose entropy saturates below the target) sends the
        # secant to β → 0 and astronomically large symbols.
        start = 0.5 * math.log2(2 * math.pi * math.e) - self.rate
        lo, hi = start - 4.0, start + 4.0
        l0 = start
        h0 = h(l0)
        l1 = min(max(l0 + h0, lo), hi)
        for _ in range(6):
            h1 = h(l1)
            if abs(h1) < 1e-3 or h1 == h0:
                break
            l0, h0, l1 = l1, h1, min(max(l1 - h1 * (l1 - l0) / (h1 - h0), lo), hi)
        return 2.0**l1

    def _encode(self, x: np.ndarray) -> Encoded:
        shape = x.shape
        lat = lattice("e8")
        nb = math.prod(shape[:-1]) * (-(-shape[-1] // 8))
        u = None
        if self.dither:  # first: its transient product is not on top of the blocks z
            ds = zlib.crc32(np.ascontiguousarray(x), self.seed) & 0xFFFFFFFF
            u = dither(nb, lat, ds)
        z, side = prepare_rows(x, rotate=self.rotate, center=self.center, seed=self.seed)
        if self.dither:
            side["dither_seed"] = np.array([ds], np.uint32)
        sub = min(nb, 32768)  # the blocks _calibrate uses
        beta32 = np.float32(self._calibrate(z[:sub], np.zeros((sub, 8)) if u is None else u[:sub]))
        b = np.float64(beta32)
        # A chunk of blocks at a time (pairwise_blocks: α is computed from the same float sums
        # as over all blocks at once); the symbols are kept as int32 (the coder's range).
        sym = np.empty((nb, 9), np.int32)

        def leaf(b0: int, b1: int) -> tuple[float, ...]:
            zc = z[b0:b1]
            uc = np.zeros_like(zc) if u is None else u[b0:b1]
            lam = closest_e8(zc / b - uc)
            s = e8_to_symbols(lam)
            if s.size and (int(s.min()) < -(2**30) or int(s.max()) > 2**30):
                raise ValueError("symbols must lie within ±2^30")
            sym[b0:b1] = s
            est = b * (lam + uc)
            return np.sum(zc * est), np.sum(est * est), np.sum(zc * zc)

        num, den, energy = pairwise_blocks(nb, leaf)
        table = int(np.sum(sym.max(axis=0).astype(np.int64) - sym.min(axis=0) + 1))
        limit = max(TABLE_MIN, x.size)
        if table > limit:
            raise ValueError(
                f"e8ec:rate={self.rate:g} needs model tables of {table} symbols for an input of "
                f"{x.size} entries (limit max({TABLE_MIN}, entries) = {limit}): use a lower rate "
                "or encode more entries at once"
            )
        alpha = float(num) / float(den) if (self.mmse and den > 0) else 1.0
        side["beta"] = np.array([beta32], np.float32)
        side["alpha"] = np.array([alpha], np.float32)
        coded = encode_integers(sym, group_axis=1)
        for k, v in coded.side.items():
            side[f"model_{k}"] = v
        entropy = _entropy_bits(sym) / 8.0
        met = abs(entropy - self.rate) <= RATE_TOLERANCE
        # Σ(z − αẑ)² from the three sums (a diagnostic: not stored)
        sq_err = float(energy) - 2.0 * alpha * float(num) + alpha * alpha * float(den)
        stats = {
            "entropy_bits_per_entry": entropy,
            "target_rate": float(self.rate),
            "rate_met": 1.0 if met else 0.0,
            "mse_normalised": max(sq_err, 0.0) / z.size,
        }
        if not met:
            self._warn_rate(entropy, z, float(beta32))
        enc = Encoded(
            codes=coded.stream, side=side, shape=shape, spec=self.spec, seed=self.seed, stats=stats
        )
        if enc.entries > MAX_ENTRIES_PER_BYTE * enc.nbytes:
            raise ValueError(
                f"e8ec codes this input in {enc.nbytes} bytes for {enc.entries} entries, fewer "
                f"than one byte per {MAX_ENTRIES_PER_BYTE} entries (a constant or almost "
                "constant matrix); decoders refuse such records, so that a small file cannot "
                "claim a huge matrix: use a fixed-rate quantizer for it"
            )
        return enc

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """A bitstream of 32-bit words, any length (the decoder checks it ends exactly after the
        last symbol); side: ``norm`` (and ``mean`` with ``center``) float16 or float32 per row,
        ``beta`` and ``alpha`` one float32 each, ``dither_seed`` one uint32 (with ``dither``),
        and the histogram models of the 9 symbol streams (:func:`mmquant.entropy.encode_integers`):
        ``model_offset`` and ``model_range`` 9 int32 each, ``model_freq`` ``Σ range`` uint16
        (length checked by the decoder). Seed: the spec's ``seed``."""
        rows = math.prod(shape[:-1])
        f = ("float16", "float32")
        side = {
            "norm": side_array(f, rows),
            "beta": side_array("float32", 1),
            "alpha": side_array("float32", 1),
            "model_offset": side_array("int32", 9),
            "model_range": side_array("int32", 9),
            "model_freq": side_array("uint16", None),
        }
        if self.center:
            side["mean"] = side_array(f, rows)
        if self.dither:
            side["dither_seed"] = side_array("uint32", 1)
        return Layout((0, None), side, seed=self.seed, codes_multiple=4)

    def _check_stored(self, enc: Encoded) -> None:
        """The histogram models define 9 distributions whose tables fill ``model_freq``, and
        ``beta`` is a positive scale (the stream itself is checked while decoding)."""
        side = enc.side
        try:
            check_histograms(side["model_offset"], side["model_range"], side["model_freq"])
        except ValueError as exc:
            raise ValueError(f"corrupt entropy-coded stream or side information: {exc}") from None
        beta = float(side["beta"][0])
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"corrupt side information: 'beta' must be positive, got {beta}")

    def _warn_rate(self, entropy: float, z: np.ndarray, beta: float) -> None:
        """Emit :class:`RateNotMetWarning` with the most likely reason."""
        nb = z.shape[0]
        cap = 9 * math.log2(nb) / 8 if nb > 1 else 0.0
        start = 0.5 * math.log2(2 * math.pi * math.e) - self.rate
        if not np.any(z):
            why = "the rows are all zeros"
        elif cap < self.rate + RATE_TOLERANCE and entropy < self.rate:
            why = (
                f"only {nb} block(s) of 8: their empirical entropy cannot exceed "
                f"9·log2({nb})/8 = {cap:.3g} bits/entry"
            )
        elif abs(math.log2(beta) - start) >= 4.0 - 1e-6:
            why = (
                f"the step β = {beta:.3g} reached the ±4-octave limit of the search around "
                f"{2.0**start:.3g} (constant, sparse or very heavy-tailed rows)"
            )
        else:
            why = "the entropy search did not converge on this data"
        warnings.warn(
            f"{self.spec}: the codes' entropy is {entropy:.3f} bits/entry, not the requested "
            f"{self.rate:g} ({why}); stats['rate_met'] = 0",
            RateNotMetWarning,
            stacklevel=4,
        )

    def _decode(self, enc: Encoded) -> np.ndarray:
        shape = enc.shape
        n8 = -(-shape[-1] // 8) * 8
        nb = math.prod(shape[:-1]) * n8 // 8
        model = {k[6:]: v for k, v in enc.side.items() if k.startswith("model_")}
        sym = decode_integers(enc.codes, model, (nb, 9), group_axis=1)
        lam = symbols_to_e8(sym)
        del sym
        if self.dither:
            lam += dither(nb, lattice("e8"), int(enc.side["dither_seed"][0]))
        else:
            lam += 0.0  # as λ + u with u = 0 (−0 → +0)
        lam *= float(enc.side["alpha"][0]) * np.float64(enc.side["beta"][0])  # (αβ)·(λ + u)
        zh = lam
        return finish_rows(
            zh, enc.side, shape, rotate=self.rotate, center=self.center, seed=self.seed
        )
