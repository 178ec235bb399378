"""Time sharing below the phase-transition rate R* (arXiv 2410.13780, THEORY.md §1).

For R < R* ≈ 0.906 bit/entry the Gaussian limit Γ(R) is the straight line from (0, 1) to
(R*, Γ(R*)): it is better to describe a fraction of the coordinates well and send nothing for the
others than to quantize every coordinate coarsely. This quantizer does exactly that:

1. a shared seeded rotation ``U`` (randomized Hadamard, :func:`mmquant.rotations.rotation`) of each
   row (length n), so that every rotated coordinate carries ≈ the same energy;
2. the first ``m = round(f·n)`` rotated coordinates are quantized by the inner quantizer, the
   others are dropped (decoded as 0); ``f = R / R_inner``;
3. inner quantizer: one bit per kept coordinate, ``ŷ = α·sign(y)`` with the per-row MMSE scale
   ``α = mean |y_kept|`` (float16 side information), ``R_inner = 1``.

Both sides use the same ``U`` and the same kept coordinates, so ``ÂᵀB̂`` is the inner product over
the kept coordinates only. No rescaling by ``n/m`` is applied: it would make the estimate unbiased
but increase its mean-squared error. For iid N(0, 1) data the normalised product error is

    D = (1 − f)·1 + f·(1 − (2/π)²) = 1 − f·(2/π)² ≈ 1 − 0.405·f,

e.g. 0.797 at R = 0.5 (Γ(0.5) = 0.718: 0.45 dB above the limit; an ideal inner quantizer at R*
would reach it). Every coordinate costs either 0 or 1 bit, so the measured rate is
``⌈m/8⌉·8/n`` bits per entry plus 16 bits per row.

References
----------
.. [1] O. Ordentlich, Y. Polyanskiy, "Optimal quantization for matrix multiplication",
   arXiv:2410.13780 (time sharing / sketching below R*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.lattices.rows import store_float
from mmquant.layout import MAX_ENTRIES_PER_BYTE, Layout, side_array
from mmquant.packing import pack, packed_nbytes, unpack
from mmquant.rotations import rotation
from mmquant.theory.matmul_rd import R_STAR
from mmquant.validation import check_float, check_int

__all__ = ["TimeShare", "MIN_RATE"]


#: Smallest rate: one byte per 1024 entries (:data:`mmquant.layout.MAX_ENTRIES_PER_BYTE`).
MIN_RATE = 8 / MAX_ENTRIES_PER_BYTE

_CHUNK = 1 << 16  # entries per step of the encoder and the decoder


@register("timeshare")
@dataclass(frozen=True)
class TimeShare(Quantizer):
    """Time-sharing quantizer for rates below 1 bit/entry: keep a fraction R of rotated coordinates.

    Parameters
    ----------
    rate : float
        Target rate R in bits per entry, :data:`MIN_RATE` ≤ R ≤ 1 (the fraction of kept
        coordinates; side information, 16 bits per row, comes on top). Below 1/128 a record
        would store less than one byte per 1024 entries, which decoders refuse
        (:data:`mmquant.layout.MAX_ENTRIES_PER_BYTE`).
    seed : int
        Seed of the shared rotation.
    """

    description: ClassVar[str] = (
        "time sharing below R*: rotate, 1-bit sign on a fraction R, drop the rest"
    )

    rate: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_float(self.rate, "rate", lo=MIN_RATE, hi=1.0)
        check_int(self.seed, "seed", lo=0, hi=2**32 - 1)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """Half a bit per entry."""
        return [cls(rate=0.5)]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """The configuration at ``rate`` (below R*)."""
        return [cls(rate=float(rate))] if MIN_RATE <= rate < R_STAR else []

    def nominal_rate(self, n: int | None = None) -> float:
        """``rate`` (one bit per kept coordinate) plus the row's scale over ``n``."""
        return self.rate + (16 / n if n else 0.0)

    def _kept(self, n: int) -> int:
        return max(1, min(n, round(self.rate * n)))

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """One bit per kept coordinate, ``m = max(1, round(rate·n))`` per row, packed over all
        rows; one ``alpha`` (float16 or float32) per row. Seed: the spec's ``seed``."""
        rows = math.prod(shape[:-1])
        side = {"alpha": side_array(("float16", "float32"), rows)}
        return Layout(packed_nbytes(rows * self._kept(shape[-1]), 1), side, seed=self.seed)

    def _encode(self, x: np.ndarray) -> Encoded:
        n = x.shape[-1]
        x2 = x.reshape(-1, n)
        n_rows = x2.shape[0]
        rot = rotation(n, self.seed)
        m = self._kept(n)
        # A chunk of rows at a time (every step is per row): only the sign bits and the
        # per-row scales are kept whole.
        raw = np.empty(n_rows)
        bits = np.empty((n_rows, m), np.uint8)
        sq = {"float16": 0.0, "float32": 0.0}  # Σ squared error for either stored scale dtype
        for r0 in range(0, n_rows, max(1, _CHUNK // n)):
            r1 = min(n_rows, r0 + max(1, _CHUNK // n))
            kept = rot.apply(x2[r0:r1].astype(np.float64))[:, :m]
            raw[r0:r1] = np.mean(np.abs(kept), axis=1)
            neg = kept < 0
            bits[r0:r1] = neg
            sign = np.where(neg, -1.0, 1.0)
            with np.errstate(over="ignore", invalid="ignore"):
                for dt in sq:
                    a = raw[r0:r1].astype(dt).astype(np.float64)
                    sq[dt] += float(np.sum((kept - sign * a[:, None]) ** 2))
        # float16 where it holds the scale to normal precision, else float32 (never saturated)
        alpha = store_float(raw)
        d = sq[alpha.dtype.name] / (n_rows * m)
        return Encoded(
            codes=pack(bits, 1),
            side={"alpha": alpha},
            shape=x.shape,
            spec=self.spec,
            seed=self.seed,
            stats={"kept_fraction": m / n, "mse_kept_coordinates": d},
        )

    def _decode(self, enc: Encoded) -> np.ndarray:
        shape = enc.shape
        n = shape[-1]
        m = self._kept(n)
        n_rows = int(np.prod(shape[:-1], dtype=np.int64))
        a = enc.side["alpha"]
        if a.size and not (np.all(np.isfinite(a)) and float(np.min(a)) >= 0):
            raise ValueError(
                "corrupt side information: 'alpha' holds a negative or non-finite scale"
            )
        bits = unpack(enc.codes, 1, n_rows * m).reshape(n_rows, m)
        alpha = enc.side["alpha"].astype(np.float64)
        rot = rotation(n, self.seed)
        out = np.empty((n_rows, n))
        step = max(1, _CHUNK // n)
        for r0 in range(0, n_rows, step):  # a chunk of rows at a time
            r1 = min(n_rows, r0 + step)
            y = np.zeros((r1 - r0, n))
            y[:, :m] = np.where(bits[r0:r1] == 1, -1.0, 1.0) * alpha[r0:r1, None]
            out[r0:r1] = rot.inverse(y)
        return out.reshape(shape)
