"""Scalar codebook quantizers for products: companders, Lloyd–Max, uniform, data-driven (2603.19559).

Every family here works the same way along the last axis:

1. each row is normalised by its RMS ``σ_r = √(mean_l x_rl²)``, stored as one float16 per row (side
   information, counted in the rate; set ``scale_dtype=float32`` for data beyond the float16 range,
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
  and applied with :meth:`DataCompander.encode_with`.

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
from mmquant.formats.limits import check_row_precision
from mmquant.kernels import load as load_kernels
from mmquant.layout import Layout, side_array
from mmquant.packing import pack, packed_nbytes, unpack
from mmquant.theory.scalar import (
    ScalarCodebook,
    compander_codebook,
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
    "DensityEstimate",
    "estimate_density",
    "fit_compander",
    "fit_product_compander",
    "product_weights",
    "row_scales",
    "encode_rows",
    "decode_rows",
    "BINS_MAX",
    "REFINE_MAX",
]

_F16_MAX = float(np.finfo(np.float16).max)  # 65504.0
_F16_TINY = float(np.finfo(np.float16).smallest_subnormal)  # 5.96e-08
_F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38
_SS_LOW = 2.0**-100  # a sum of squares below this may have lost digits to underflow
_CHUNK = 1 << 16  # samples per step of estimate_density's binning

#: Most histogram bins of :func:`estimate_density` (its tables and smoothing are O(bins)).
BINS_MAX = 1 << 16
#: Most weighted-Lloyd iterations of :func:`fit_compander` (each one a pass over the samples).
REFINE_MAX = 100


# ---------------------------------------------------------------------------------------------
# Shared row-normalised codebook path (numpy reference; kernels/compander.py must match it)
# ---------------------------------------------------------------------------------------------
def row_scales(x2: np.ndarray, scale_dtype: str = "float16") -> np.ndarray:
    """Per-row RMS ``√(mean x²)`` rounded to ``scale_dtype`` (the stored side information).

    The sum of squares is accumulated in float32 for float32 input (float64 otherwise, or on
    overflow; rows of tiny values, whose squares underflow, are computed scaled by their max);
    the kernels share this function, so both paths store the same scales.

    A nonzero RMS below the smallest float16 subnormal is stored as that subnormal (never 0); the
    encoders then refuse rows whose stored scale is too imprecise (:mod:`mmquant.formats.limits`).

    Raises
    ------
    ValueError
        If an RMS exceeds the float16 range (use ``scale_dtype="float32"``), or, for float32,
        ``float32_max/1024`` (the normalised values must be finite in float32).
    """
    return _store_scales(_row_rms(x2), scale_dtype)


def _row_rms(x2: np.ndarray) -> np.ndarray:
    """Row RMS (float64), the sum of squares accumulated as :func:`row_scales` documents.

    Rows whose sum of squares underflows (below 2^-100: tiny or subnormal rows, whose squares
    vanish in float32 and, below 1e-154, in float64) are recomputed as ``m·√(mean (x/m)²)`` with
    ``m`` the row's max: such a row no longer gets σ = 0 (and decodes to zeros).
    """
    xa = np.asarray(x2)
    if xa.dtype != np.float32:
        xa = xa.astype(np.float64)
    with np.errstate(over="ignore"):
        ss = np.einsum("ij,ij->i", xa, xa)  # accumulated in the input precision (fast for f32)
    if not np.all(np.isfinite(ss)):  # float32 overflow: redo in float64
        x64 = xa.astype(np.float64)
        ss = np.einsum("ij,ij->i", x64, x64)
    rms = np.sqrt(ss.astype(np.float64) / xa.shape[1])
    low = ss < _SS_LOW  # squares underflowed (to 0 or subnormals): redo scaled by the row's max
    if low.any():
        r = np.asarray(xa[low], np.float64)
        m = np.abs(r).max(axis=1)
        m1 = np.where(m > 0, m, 1.0)
        rms[low] = m * np.sqrt(np.mean((r / m1[:, None]) ** 2, axis=1))
    return rms


def _store_scales(rms: np.ndarray, scale_dtype: str) -> np.ndarray:
    if scale_dtype == "float16":
        if rms.size and float(rms.max()) > _F16_MAX:
            raise ValueError(
                f"a row RMS of {float(rms.max()):.3g} exceeds the float16 range; "
                "use scale_dtype=float32"
            )
        s = rms.astype(np.float16)
        s[(s == 0) & (rms > 0)] = np.float16(_F16_TINY)
        return s
    if rms.size and float(rms.max()) > _F32_MAX / 1024:
        raise ValueError(f"a row RMS of {float(rms.max()):.3g} is too large for float32 codes")
    return rms.astype(np.float32)


def _check_scales(
    x2: np.ndarray, scales: np.ndarray, rms: np.ndarray, cb: ScalarCodebook, spec: str, dt: str
) -> None:
    """Refuse rows whose stored RMS is too small to be precise (see :mod:`~mmquant.formats.limits`).

    A compander maps ``x/σ`` to a codebook designed for unit variance, so a wrong stored ``σ`` (a
    float16 subnormal, or ``2^−24`` for a smaller RMS) decodes far from the input.
    """
    thr = cb.thresholds.astype(np.float32)
    pts = cb.points.astype(np.float32)

    def rebuild(xr: np.ndarray, s: np.ndarray) -> np.ndarray:
        u = xr / np.where(s > 0, s, 1.0)[:, None]
        return pts[np.searchsorted(thr, u, "right")].astype(np.float64) * s[:, None]

    check_row_precision(
        x2,
        [scales],
        [rms],
        rebuild,
        what=spec,
        scale_dtype=dt,
        hint="use scale_dtype=float32" if dt == "float16" else "rescale the data",
    )


def encode_rows(x2: np.ndarray, scales: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Cell indices (uint8) of ``x/σ_row`` among float32 thresholds (reference implementation).

    ``u = float32(x) · float32(1/σ)`` (``1/σ`` rounded to float32 once per row; 0 for σ = 0), then
    ``searchsorted(thresholds, u, side='right')``: a value equal to a threshold goes to the upper cell.
    """
    s = scales.astype(np.float32)
    inv = np.zeros_like(s)
    np.divide(np.float32(1.0), s, out=inv, where=s > 0)
    u = np.asarray(x2, np.float32) * inv[:, None]
    return np.searchsorted(thresholds.astype(np.float32), u.reshape(-1), "right").astype(np.uint8)


def decode_rows(codes: np.ndarray, scales: np.ndarray, points: np.ndarray, n: int) -> np.ndarray:
    """``σ_row · points[code]`` as float32, shape ``(rows, n)``."""
    p = points.astype(np.float32)
    return p[codes.reshape(-1, n)] * scales.astype(np.float32)[:, None]


def _encode_with(
    x: np.ndarray, cb: ScalarCodebook, bits: int, spec: str, scale_dtype: str, store_points: bool
) -> Encoded:
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    rms = _row_rms(x2)
    scales = _store_scales(rms, scale_dtype)
    _check_scales(x2, scales, rms, cb, spec, scale_dtype)
    thr = cb.thresholds.astype(np.float32)
    kc = load_kernels("compander")  # numba kernels, bit-exact with encode_rows and pack
    if kc is not None:
        packed = load_kernels("formats").pack(kc.encode_rows_fast(x2, scales, thr), bits)
    else:
        packed = pack(encode_rows(x2, scales, thr), bits)
    side = {"scale": scales}
    if store_points:
        side["points"] = cb.points.astype(np.float32)
    # (no entropy statistic here: a histogram of the codes would halve the encode speed;
    # mmquant.entropy measures it from the unpacked codes when wanted)
    return Encoded(codes=packed, side=side, shape=x.shape, spec=spec)


def _row_layout(shape: tuple[int, ...], bits: int, scale_dtype: str, points: bool) -> Layout:
    """``bits`` per entry packed, one RMS ``scale`` per row (and the float32 ``points``)."""
    side = {"scale": side_array(scale_dtype, math.prod(shape[:-1]))}
    if points:
        side["points"] = side_array("float32", 1 << bits)
    return Layout(packed_nbytes(math.prod(shape), bits), side)


def _decode_with(enc: Encoded, points: np.ndarray, bits: int) -> np.ndarray:
    n = enc.shape[-1]
    s = enc.side["scale"]
    if s.size and not (np.all(np.isfinite(s)) and float(np.min(s)) >= 0):
        raise ValueError("corrupt side information: 'scale' holds a negative or non-finite RMS")
    codes = unpack(enc.codes, bits, enc.entries)
    kf = load_kernels("formats")  # numba kernels, bit-exact with decode_rows
    if kf is not None:  # one group of n per row
        out = kf.decode_table(codes, points, enc.side["scale"].reshape(-1, 1), n, n)
    else:
        out = decode_rows(codes, enc.side["scale"], points, n)
    return out.reshape(enc.shape)


def _variants_bits(cls: type, rate: float | None, default: tuple[int, ...] = (4,)) -> list:
    if rate is None:
        return [cls(bits=b) for b in default]
    b = round(rate)
    return [cls(bits=b)] if 1 <= b <= 8 and abs(rate - b) <= 0.3 else []


class _RowCodebookQuantizer(Quantizer):
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

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits`` per entry packed, one RMS ``scale`` in ``scale_dtype`` per row."""
        return _row_layout(shape, self.bits, self.scale_dtype, False)

    def _encode(self, x: np.ndarray) -> Encoded:
        return _encode_with(x, self.codebook(), self.bits, self.spec, self.scale_dtype, False)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return _decode_with(enc, self.codebook().points, self.bits)


@functools.lru_cache(maxsize=256)
def _cached_codebook(q: _RowCodebookQuantizer) -> ScalarCodebook:
    return q._design()


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

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        return _variants_bits(cls, rate)


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

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        return _variants_bits(cls, rate)


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

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        return _variants_bits(cls, rate)


# ---------------------------------------------------------------------------------------------
# Data-driven compander
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DensityEstimate:
    """Estimated ``p(x)``, ``m(x) = E[Y²|X=x]`` and ``λ ∝ (p·m)^{1/3}`` on a grid (standardised units).

    Attributes
    ----------
    grid : numpy.ndarray
        Bin centres (units of the row RMS σ).
    p : numpy.ndarray
        Smoothed density of X (integrates to 1 over the grid).
    m : numpy.ndarray
        Smoothed, shrunk estimate of ``E[Y²|X=x]`` (``1`` when no weights were given).
    lam : numpy.ndarray
        Point density ``∝ (p·m)^{1/3}`` (integrates to 1).
    clip : float
        Half-width ``L`` of the grid; samples beyond ±L were counted in the edge bins.

    The grid is not uniform (bins equally spaced in ``asinh(x)``).
    """

    grid: np.ndarray
    p: np.ndarray
    m: np.ndarray
    lam: np.ndarray
    clip: float


def _smooth(v: np.ndarray, sigma_bins: float) -> np.ndarray:
    if sigma_bins <= 0:
        return v
    r = int(np.ceil(4 * sigma_bins))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_bins) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(v, r), k, mode="valid")


def estimate_density(
    x: ArrayLike,
    w: ArrayLike | None = None,
    *,
    bins: int = 512,
    clip_quantile: float = 0.9999,
    expand: float = 2.0,
    smooth_bins: float = 2.0,
    shrink: float = 2.0,
) -> DensityEstimate:
    """Robust binned estimate of ``p(x)``, ``m(x) = E[Y²|X=x]`` and ``λ ∝ (p·m)^{1/3}``.

    Estimator (samples ``x_t`` in standardised units, weights ``w_t`` with ``E[w|x] = m(x)``, e.g.
    ``w_t = y_t²`` for paired samples):

    1. range ``[−L, L]`` with ``L = min(max|x|, expand·quantile(|x|, clip_quantile))``: light tails
       are kept whole, heavy tails are clipped (samples beyond ±L are counted in the edge bins);
    2. ``bins`` bins equally spaced in ``z = asinh(x)`` (fine near 0, wider in the tails, so that a
       far outlier does not coarsen the body); counts ``N_b`` and weight sums ``W_b`` are smoothed
       by a Gaussian kernel of ``smooth_bins`` bins;
    3. ``p̂_b = N_b/(N·Δx_b)``; ``m̂_b = (W_b + κ·m̄)/(N_b + κ)`` (shrinkage of sparse bins towards
       the global mean ``m̄`` with ``κ = shrink`` pseudo-samples);
    4. ``λ = (p̂·m̂)^{1/3}`` plus a floor of 1e-6·max (so that ``F`` is invertible), normalised.

    Parameters
    ----------
    x : array_like
        Samples of X (any shape, flattened), standardised.
    w : array_like, optional
        Non-negative weights, same size as ``x``; ``None`` means ``m ≡ 1``.
    bins : int
        Number of histogram bins, 16 to :data:`BINS_MAX`.
    clip_quantile : float
        Quantile of ``|x|`` that, times ``expand``, caps the grid half-width; in (0.5, 1].
    expand : float
        Factor (≥ 1) applied to that quantile.
    smooth_bins : float
        Standard deviation of the smoothing kernel, in bins (0 = none).
    shrink : float
        Pseudo-count κ of the shrinkage of ``m̂`` towards its mean.
    """
    xs = as_real_array(x, name="x").reshape(-1).astype(np.float64, copy=False)
    nb = check_int(bins, "bins", 16, BINS_MAX)
    cq = check_float(clip_quantile, "clip_quantile", 0.5, 1.0, lo_open=True)
    ex = check_float(expand, "expand", 1.0)
    sb = check_float(smooth_bins, "smooth_bins", 0.0)
    kappa = check_float(shrink, "shrink", 0.0)
    ws = None  # None: every weight is 1 (the sums below are then exact counts)
    if w is not None:
        ws = as_real_array(w, name="w").reshape(-1).astype(np.float64, copy=False)
        if ws.size != xs.size:
            raise ValueError(f"w has {ws.size} entries, x has {xs.size}: they must be paired")
        if np.any(ws < 0):
            raise ValueError("weights w must be ≥ 0 (they estimate E[Y²|X])")
    ax = np.abs(xs)
    top = float(ax.max())
    lim = min(top, ex * float(np.quantile(ax, cq, overwrite_input=True)))  # partitions ax
    del ax
    if lim <= 0:
        lim = 1.0
    zl = float(np.arcsinh(lim))
    z_edges = np.linspace(-zl, zl, nb + 1)
    edges = np.sinh(z_edges)
    dz = z_edges[1] - z_edges[0]
    # bin indices a chunk at a time (the same values as at once; the temporaries stay small)
    idx = np.empty(xs.size, np.int64)
    for i in range(0, xs.size, _CHUNK):
        c = np.arcsinh(xs[i : i + _CHUNK])
        c += zl
        c /= dz
        idx[i : i + _CHUNK] = np.clip(c.astype(np.int64), 0, nb - 1)
    counts = np.bincount(idx, minlength=nb).astype(np.float64)
    cnt = _smooth(counts, sb)
    wsum = _smooth(counts if ws is None else np.bincount(idx, weights=ws, minlength=nb), sb)
    mbar = 1.0 if ws is None else float(ws.mean())
    width = np.diff(edges)
    p = cnt / (xs.size * width)
    m = (wsum + kappa * mbar) / (cnt + kappa) if kappa > 0 else wsum / np.maximum(cnt, 1e-300)
    lam = np.cbrt(p * m)
    lam = lam + 1e-6 * lam.max()
    lam /= float(np.sum(lam * width))
    return DensityEstimate(0.5 * (edges[1:] + edges[:-1]), p, m, lam, lim)


def fit_compander(
    x: ArrayLike,
    bits: int,
    w: ArrayLike | None = None,
    *,
    refine: int = 0,
    **estimator: float,
) -> ScalarCodebook:
    """Compander (``K = 2^bits`` levels) of the estimated ``λ ∝ (p̂·m̂)^{1/3}``, optionally refined.

    ``refine`` (at most :data:`REFINE_MAX`) weighted-Lloyd iterations on the samples: thresholds at midpoints, points
    ``c_i = Σ_{x_t∈cell} w_t x_t / Σ_{x_t∈cell} w_t`` (empty cells keep their point). Other keyword
    arguments go to :func:`estimate_density`.
    """
    b = check_int(bits, "bits", 1, 8)
    nref = check_int(refine, "refine", 0, REFINE_MAX)
    est = estimate_density(x, w, **estimator)
    grid = np.concatenate([[-est.clip], est.grid, [est.clip]])  # λ is constant on each bin
    lam = np.concatenate([[est.lam[0]], est.lam, [est.lam[-1]]])
    cb = compander_codebook(grid, lam, 1 << b)
    if nref:
        xs = np.asarray(x, np.float64).reshape(-1)
        ws = None if w is None else np.asarray(w, np.float64).reshape(-1)
        c = cb.points.copy()
        for _ in range(nref):
            t = 0.5 * (c[1:] + c[:-1])
            cell = np.searchsorted(t, xs, "right")
            if ws is None:  # weights 1: exact counts, and 1·x = x
                sw = np.bincount(cell, minlength=c.size).astype(np.float64)
                swx = np.bincount(cell, weights=xs, minlength=c.size)
            else:
                sw = np.bincount(cell, weights=ws, minlength=c.size)
                swx = np.bincount(cell, weights=ws * xs, minlength=c.size)
            c = np.where(sw > 0, swx / np.where(sw > 0, sw, 1.0), c)
            c = np.sort(c)
        cb = ScalarCodebook(0.5 * (c[1:] + c[:-1]), c)
    return cb


def product_weights(x: ArrayLike, partner: ArrayLike, scale_dtype: str = "float16") -> tuple:
    """Standardised samples of ``x`` and their weights for the product with ``partner``.

    For ``C = x·partnerᵀ`` (both ``rows × n``, quantized along ``n``), every pair
    ``(x_il, partner_jl)`` enters the product. The error of side ``x`` weighs the squared error of
    ``u_il = x_il/σ_i`` by ``σ_i²·S_l`` with ``S_l = mean_j partner_jl²``; so ``p̂·m̂`` estimated
    from samples ``u_il`` with weights ``σ_i²·S_l`` is the ``p·m`` of the product error exactly
    (for the uniform joint law over ``i, j, l``).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``u`` (standardised samples, flattened) and ``w`` (weights, same size).
    """
    xa = as_real_array(x, name="x", ndim=2).astype(np.float64)
    pa = as_real_array(partner, name="partner", ndim=2).astype(np.float64)
    if xa.shape[1] != pa.shape[1]:
        raise ValueError(f"x is {xa.shape} and partner is {pa.shape}: need the same inner dim")
    s = row_scales(xa, scale_dtype).astype(np.float64)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    u = xa * inv[:, None]
    sl = np.mean(pa * pa, axis=0)
    w = (s * s)[:, None] * sl[None, :]
    w = w / max(float(w.mean()), 1e-300)
    return u.reshape(-1), w.reshape(-1)


def fit_product_compander(
    x: ArrayLike, partner: ArrayLike, bits: int, *, refine: int = 0, **estimator: float
) -> ScalarCodebook:
    """Product-optimal data-driven compander for ``x`` (rows × n) in the product ``x·partnerᵀ``.

    ``λ ∝ (p̂·m̂)^{1/3}`` from :func:`product_weights` and :func:`estimate_density`; see
    :func:`fit_compander` for ``refine``.
    """
    u, w = product_weights(x, partner)
    return fit_compander(u, bits, w, refine=refine, **estimator)


@register("datacompander")
@dataclass(frozen=True)
class DataCompander(Quantizer):
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
        return _encode_with(arr, codebook, self.bits, self.spec, self.scale_dtype, True)

    def _encode(self, x: np.ndarray) -> Encoded:
        return self.encode_with(x, self.fit(x))

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits`` per entry packed, one RMS ``scale`` per row, the ``2^bits`` float32 ``points``."""
        return _row_layout(shape, self.bits, self.scale_dtype, True)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return _decode_with(enc, enc.side["points"], self.bits)

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        return _variants_bits(cls, rate)
