"""Scalar codebook quantizers for products: companders, Lloyd–Max, uniform, data-driven (2603.19559).

Every family here works the same way along the last axis:

1. each row is normalised by its RMS ``σ_r = √(mean_l x_rl²)``, stored as one float16 per row (side
   array ``rms``, counted in the rate; set ``scale_dtype=float32`` for data beyond the float16 range,
   or for rows whose RMS is too small for float16 -- below ~3.8e-6 they are refused when the
   rounded σ would spoil them, see :mod:`mmquant.formats.limits`),
2. each normalised entry ``u = x/σ_r`` (float32) is mapped to the index of its cell among ``K = 2^bits``
   cells ``[t_{i−1}, t_i)`` (``np.searchsorted(thresholds, u, 'right')``), packed at ``bits`` bits,
3. decode: ``x̂ = σ_r·c_code``.

The codebooks (thresholds ``t``, points ``c``, in units of σ):

* ``compander:bits=4,rho=0.8`` -- compander of the product-optimal density of a standard bivariate
  normal pair with correlation ρ, ``λ*(u) ∝ exp(−u²/6)((1−ρ²)+ρ²u²)^{1/3}``: thresholds
  ``F⁻¹(i/K)``, points ``F⁻¹((i−½)/K)``. ``rho=0`` is the Panter–Dite compander (``λ ∝ φ^{1/3}``).
  ``refine=true`` replaces it by the weighted-Lloyd quantizer (midpoint thresholds, points
  ``c_i = E[X m(X)|cell]/E[m(X)|cell]``, ``m(x) = (1−ρ²)+ρ²x²``).
* ``lloydmax:bits=4`` -- Lloyd–Max quantizer of N(0, 1) (MSE-optimal).
* ``uniform:bits=4`` -- best (MSE-optimal step) symmetric uniform quantizer of N(0, 1); with ``rho``
  the step minimises the exact product error ``V`` of a pair with that correlation.
* ``datacompander:bits=4`` -- compander fitted to the data it encodes (see :func:`estimate_density`);
  its ``K`` points are stored as float32 side information (counted in the rate). On its own it can
  only see ``x`` and uses ``m ≡ 1`` (a data Panter–Dite compander); the product-optimal version, with
  ``m(x) = E[Y²|X=x]`` estimated from the partner matrix, is built by :func:`fit_product_compander`
  and applied with :meth:`DataCompander.encode_with` (the estimators are in :mod:`.density`).

The encode/decode is the block engine's (:mod:`mmquant.formats.engine`): a codebook element map
with one group per row and the :class:`~mmquant.formats.scales.RowRMS` scale rule.

References
----------
.. [1] "Optimal scalar quantization for matrix multiplication", arXiv:2603.19559.
.. [2] J. Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory, 1960.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.density import (
    BINS_MAX,
    REFINE_MAX,
    DensityEstimate,
    estimate_density,
    fit_compander,
    fit_product_compander,
    product_weights,
)
from mmquant.formats.elements import CodebookElements
from mmquant.formats.engine import BlockFormat
from mmquant.formats.scales import RowRMS, rms_multipliers, row_rms, store_rms
from mmquant.layout import Layout, side_array
from mmquant.theory.scalar import (
    ScalarCodebook,
    gaussian_product_compander,
    lloyd_max_gaussian,
    uniform_gaussian,
    weighted_lloyd_gaussian,
)
from mmquant.validation import as_real_array, check_choice, check_float, check_int

__all__ = [
    "GaussianCompander",
    "LloydMax",
    "Uniform",
    "DataCompander",
    "row_format",
    "row_scales",
    "encode_rows",
    "decode_rows",
    # the estimators of .density, re-exported for existing callers
    "DensityEstimate",
    "estimate_density",
    "fit_compander",
    "fit_product_compander",
    "product_weights",
    "BINS_MAX",
    "REFINE_MAX",
]


# ---------------------------------------------------------------------------------------------
# Row-normalised codebooks on the block engine (numpy references of the kernels below)
# ---------------------------------------------------------------------------------------------
def row_scales(x2: np.ndarray, scale_dtype: str = "float16") -> np.ndarray:
    """Per-row RMS ``√(mean x²)`` rounded to ``scale_dtype`` (the stored side information).

    The sum of squares is accumulated in float32 for float32 input (float64 otherwise, or on
    overflow; rows of tiny values, whose squares underflow, are computed scaled by their max).
    A nonzero RMS below the smallest float16 subnormal is stored as that subnormal (never 0); the
    encoders then refuse rows whose stored scale is too imprecise (:mod:`mmquant.formats.limits`).

    Raises
    ------
    ValueError
        If an RMS exceeds the float16 range (use ``scale_dtype="float32"``), or, for float32,
        ``float32_max/1024`` (the normalised values must be finite in float32).
    """
    return store_rms(row_rms(x2), scale_dtype)


def encode_rows(x2: np.ndarray, scales: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Cell indices (uint8) of ``x/σ_row`` among float32 thresholds (reference implementation).

    ``u = float32(x) · float32(1/σ)`` (``1/σ`` rounded to float32 once per row; 0 for σ = 0), then
    ``searchsorted(thresholds, u, side='right')``: a value equal to a threshold goes to the upper cell.
    """
    u = np.asarray(x2, np.float32) * rms_multipliers(scales)[:, None]
    return np.searchsorted(thresholds.astype(np.float32), u.reshape(-1), "right").astype(np.uint8)


def decode_rows(codes: np.ndarray, scales: np.ndarray, points: np.ndarray, n: int) -> np.ndarray:
    """``σ_row · points[code]`` as float32, shape ``(rows, n)``."""
    p = points.astype(np.float32)
    return p[codes.reshape(-1, n)] * scales.astype(np.float32)[:, None]


def row_format(cb: ScalarCodebook, scale_dtype: str, spec: str) -> BlockFormat:
    """The block format of a codebook in units of the row RMS (one group per row)."""
    el = CodebookElements(cb.points, cb.thresholds)
    return BlockFormat(el, RowRMS(scale_dtype), 0, "compander", spec)


def _row_layout(shape: tuple[int, ...], bits: int, scale_dtype: str, points: bool) -> Layout:
    """``bits`` per entry packed, one ``rms`` per row (and the float32 ``points``)."""
    from mmquant.packing import packed_nbytes

    side = {"rms": side_array(scale_dtype, math.prod(shape[:-1]))}
    if points:
        side["points"] = side_array("float32", 1 << bits)
    return Layout(packed_nbytes(math.prod(shape), bits), side)


class _BitsFamily:
    """Rates and configurations of the families with ``bits`` per entry and one RMS per row."""

    bits: int
    scale_dtype: str

    def nominal_rate(self, n: int | None = None) -> float:
        """``bits`` plus the row RMS over the row (16 or 32 bits over ``n``)."""
        sbits = 16 if self.scale_dtype == "float16" else 32
        return self.bits + (sbits / n if n else 0.0)

    @classmethod
    def defaults(cls) -> list:
        """4 bits per entry."""
        return [cls(bits=4)]

    @classmethod
    def candidates(cls, rate: float) -> list:
        """1 to 8 bits per entry."""
        return [cls(bits=b) for b in range(1, 9)]


class _RowCodebookQuantizer(_BitsFamily, Quantizer):
    """Common encode/decode of a fixed (data-independent) codebook in units of the row RMS."""

    bits: int
    scale_dtype: str

    def _check_common(self) -> None:
        check_int(self.bits, "bits", 1, 8)
        check_choice(self.scale_dtype, "scale_dtype", ("float16", "float32"))

    def codebook(self) -> ScalarCodebook:
        """Thresholds and points in units of the row RMS σ."""
        return _cached_codebook(self)

    def _design(self) -> ScalarCodebook:
        raise NotImplementedError

    def block_format(self) -> BlockFormat:
        """The engine's description: this codebook, one RMS per row."""
        return _cached_format(self)

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits`` per entry packed, one ``rms`` in ``scale_dtype`` per row."""
        return _row_layout(shape, self.bits, self.scale_dtype, False)

    def _encode(self, x: np.ndarray) -> Encoded:
        codes, side = self.block_format().encode(x)
        return Encoded(codes=codes, side=side, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return self.block_format().decode(enc.codes, enc.side, enc.shape)


@functools.lru_cache(maxsize=256)
def _cached_codebook(q: _RowCodebookQuantizer) -> ScalarCodebook:
    return q._design()


@functools.lru_cache(maxsize=256)
def _cached_format(q: _RowCodebookQuantizer) -> BlockFormat:
    return row_format(q.codebook(), q.scale_dtype, q.spec)


@register("compander")
@dataclass(frozen=True)
class GaussianCompander(_RowCodebookQuantizer):
    """Product-optimal Gaussian compander: λ*(u) ∝ exp(−u²/6)((1−ρ²)+ρ²u²)^{1/3} (units of σ).

    Parameters
    ----------
    bits : int
        Bits per entry of the codes (``K = 2^bits`` levels), 1..8. Rate = bits + 16/n (float16 RMS).
    rho : float
        Correlation of the pairs ``(X, Y)`` the density is designed for; ``0`` = Panter–Dite.
    refine : bool
        Weighted-Lloyd refinement (midpoint thresholds, points ``E[X m(X)|cell]/E[m(X)|cell]``).
    scale_dtype : str
        ``"float16"`` (default) or ``"float32"`` row scales.
    """

    bits: int = 4
    rho: float = 0.0
    refine: bool = False
    scale_dtype: str = "float16"

    description = "compander of the product-optimal density for Gaussian pairs (2603.19559)"

    def __post_init__(self) -> None:
        self._check_common()
        check_float(self.rho, "rho", -1.0, 1.0)

    def _design(self) -> ScalarCodebook:
        k = 1 << self.bits
        if self.refine:
            return weighted_lloyd_gaussian(self.rho, k)
        return gaussian_product_compander(self.rho, k)


@register("lloydmax")
@dataclass(frozen=True)
class LloydMax(_RowCodebookQuantizer):
    """Lloyd–Max (MSE-optimal) quantizer of N(0,1), applied in units of the row RMS."""

    bits: int = 4
    scale_dtype: str = "float16"

    description = "Lloyd–Max quantizer of N(0,1) with per-row RMS scale"

    def __post_init__(self) -> None:
        self._check_common()

    def _design(self) -> ScalarCodebook:
        return lloyd_max_gaussian(1 << self.bits)


@register("uniform")
@dataclass(frozen=True)
class Uniform(_RowCodebookQuantizer):
    """Best symmetric uniform quantizer of N(0,1) (``K`` levels, step Δ), in units of the row RMS.

    ``rho=None``: Δ minimises the MSE (4 bits: Δ = 0.3352, MSE 0.01154); ``rho`` a number: Δ
    minimises the exact product error V of a Gaussian pair with that correlation.
    """

    bits: int = 4
    rho: float | None = None
    scale_dtype: str = "float16"

    description = "uniform quantizer with the MSE-optimal step for N(0,1), per-row RMS scale"

    def __post_init__(self) -> None:
        self._check_common()
        if self.rho is not None:
            check_float(self.rho, "rho", -1.0, 1.0)

    def _design(self) -> ScalarCodebook:
        return uniform_gaussian(1 << self.bits, self.rho)


@register("datacompander")
@dataclass(frozen=True)
class DataCompander(_BitsFamily, Quantizer):
    """Compander fitted to the data; its K points travel as float32 side information.

    ``encode(x)`` fits ``λ ∝ p̂^{1/3}`` to the standardised entries of ``x`` itself (``m ≡ 1``, the
    only choice without the partner); :meth:`encode_with` applies any codebook, e.g. the
    product-optimal one from :func:`fit_product_compander`. Rate = bits + 16/n + 32·K/entries.

    Parameters
    ----------
    bits : int
        Bits per entry (``K = 2^bits`` levels), 1..8.
    refine : int
        Weighted-Lloyd iterations after the compander, 0 to :data:`REFINE_MAX` (each is a pass
        over the entries).
    bins : int
        Histogram bins of the density estimate, 16 to :data:`BINS_MAX`.
    clip_quantile : float
        Quantile of ``|x|/σ`` that bounds the estimate's range (see :func:`estimate_density`).
    scale_dtype : str
        ``"float16"`` (default) or ``"float32"`` row scales.
    """

    bits: int = 4
    refine: int = 0
    bins: int = 512
    clip_quantile: float = 0.9999
    scale_dtype: str = "float16"

    description = "compander fitted to the data (histogram estimate, codebook as side info)"

    def __post_init__(self) -> None:
        check_int(self.bits, "bits", 1, 8)
        check_int(self.refine, "refine", 0, REFINE_MAX)
        check_int(self.bins, "bins", 16, BINS_MAX)
        check_float(self.clip_quantile, "clip_quantile", 0.5, 1.0, lo_open=True)
        check_choice(self.scale_dtype, "scale_dtype", ("float16", "float32"))

    def fit(self, x: ArrayLike, partner: ArrayLike | None = None) -> ScalarCodebook:
        """Codebook for ``x`` (rows × n), product-optimal if ``partner`` (rows' × n) is given."""
        xa = as_real_array(x, name="x", min_ndim=1)
        x2 = xa.reshape(-1, xa.shape[-1])
        est = {"bins": self.bins, "clip_quantile": self.clip_quantile}
        if partner is None:
            s = row_scales(x2, self.scale_dtype).astype(np.float64)
            u = x2 * np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)[:, None]
            return fit_compander(u, self.bits, None, refine=self.refine, **est)
        pa = as_real_array(partner, name="partner", min_ndim=1)
        return fit_product_compander(
            x2, pa.reshape(-1, pa.shape[-1]), self.bits, refine=self.refine, **est
        )

    def encode_with(self, x: ArrayLike, codebook: ScalarCodebook) -> Encoded:
        """Encode ``x`` with a given codebook (its points are stored in the record)."""
        if not isinstance(codebook, ScalarCodebook) or codebook.levels != 1 << self.bits:
            raise ValueError(f"codebook must be a ScalarCodebook with {1 << self.bits} levels")
        arr = as_real_array(x, name="x", min_ndim=1)
        codes, side = row_format(codebook, self.scale_dtype, self.spec).encode(arr)
        side["points"] = codebook.points.astype(np.float32)
        return Encoded(codes=codes, side=side, shape=arr.shape, spec=self.spec)

    def _encode(self, x: np.ndarray) -> Encoded:
        return self.encode_with(x, self.fit(x))

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits`` per entry packed, one ``rms`` per row, the ``2^bits`` float32 ``points``."""
        return _row_layout(shape, self.bits, self.scale_dtype, True)

    def _decode(self, enc: Encoded) -> np.ndarray:
        pts = enc.side["points"]  # the record's table (decoding needs no thresholds)
        el = CodebookElements(pts, np.zeros(pts.size - 1, np.float32))
        fmt = BlockFormat(el, RowRMS(self.scale_dtype), 0, "compander", self.spec)
        return fmt.decode(enc.codes, enc.side, enc.shape)
