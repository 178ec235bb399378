"""Data-driven compander design: a robust density estimate and the compander fitted to it.

The compander of a density ``λ ∝ (p·m)^{1/3}`` (``p`` the density of the standardised entries,
``m(x) = E[Y²|X=x]`` the weight of an entry in the product error) is the product-optimal scalar
quantizer at high rate (arXiv:2603.19559). :func:`estimate_density` estimates ``p``, ``m`` and
``λ`` from samples; :func:`fit_compander` turns the estimate into a codebook (optionally refined by
weighted Lloyd iterations); :func:`product_weights` and :func:`fit_product_compander` build the
product-optimal version from the partner matrix. :class:`mmquant.formats.compander.DataCompander`
stores such a codebook in its records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from mmquant.formats.scales import row_rms, store_rms
from mmquant.theory.scalar import ScalarCodebook, compander_codebook
from mmquant.validation import as_real_array, check_float, check_int

__all__ = [
    "DensityEstimate",
    "estimate_density",
    "fit_compander",
    "fit_product_compander",
    "product_weights",
    "BINS_MAX",
    "REFINE_MAX",
]

_CHUNK = 1 << 16  # samples per step of estimate_density's binning

#: Most histogram bins of :func:`estimate_density` (its tables and smoothing are O(bins)).
BINS_MAX = 1 << 16
#: Most weighted-Lloyd iterations of :func:`fit_compander` (each one a pass over the samples).
REFINE_MAX = 100


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
    s = store_rms(row_rms(xa), scale_dtype).astype(np.float64)
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
