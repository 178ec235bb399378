"""Rate–distortion of matrix multiplication for iid Gaussian matrices (arXiv 2410.13780).

Setting: ``A ∈ ℝ^{n×a}`` and ``B ∈ ℝ^{n×b}`` with iid N(0, 1) entries are encoded separately at
``R`` bits per entry; the decoder estimates ``AᵀB``. The distortion per entry of the product,
normalised by ``n``, is ``D = E‖AᵀB − Ĉ‖_F² / (n·a·b)``. Its smallest achievable value is

    Γ(R) = 2·2^{−2R} − 2^{−4R}                         for R ≥ R*,
    Γ(R) = 1 − (1 − Γ(R*))·R / R*                      for 0 ≤ R ≤ R*,

the second branch being the lower convex envelope through ``(0, 1)`` (time sharing / sketching),
and ``R* ≈ 0.906`` the rate where the tangent of the first branch passes through ``(0, 1)``.

References
----------
.. [1] O. Ordentlich, Y. Polyanskiy, "Optimal quantization for matrix multiplication",
   arXiv:2410.13780.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq

__all__ = ["R_STAR", "GAMMA_R_STAR", "gamma", "gamma_inverse", "shannon_distortion", "shannon_rate"]


def _gamma_hi(r: np.ndarray) -> np.ndarray:
    d = np.exp2(-2.0 * r)
    return 2.0 * d - d * d


def _tangent_gap(r: float) -> float:
    # Γ(R) − R·Γ′(R) − 1 on the high-rate branch; its root is R*.
    d = 2.0 ** (-2.0 * r)
    g = 2.0 * d - d * d
    dg = math.log(2.0) * (-4.0 * d + 4.0 * d * d)
    return g - r * dg - 1.0


#: Phase-transition rate R* ≈ 0.9063235 bit/entry (root of Γ(R) − R·Γ′(R) = 1).
R_STAR: float = float(brentq(_tangent_gap, 0.3, 2.0, xtol=1e-15, rtol=1e-15))
#: Γ(R*) ≈ 0.4883003.
GAMMA_R_STAR: float = float(_gamma_hi(np.float64(R_STAR)))


def _check_rates(rate: ArrayLike) -> np.ndarray:
    r = np.asarray(rate, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"rate must be finite and ≥ 0 bits/entry, got {rate!r}")
    return r


def gamma(rate: ArrayLike) -> np.ndarray | float:
    """Gaussian matrix-multiplication rate–distortion function Γ(R).

    Parameters
    ----------
    rate : array_like
        Rate R in bits per entry (≥ 0).

    Returns
    -------
    float or numpy.ndarray
        Γ(R), the smallest normalised product distortion ``E‖AᵀB − Ĉ‖_F²/(n·a·b)`` for iid N(0,1)
        matrices (dimensionless, 1 at R = 0).

    Examples
    --------
    >>> round(float(gamma(2.0)), 8)
    0.12109375
    >>> round(float(gamma(0.5)), 7)
    0.7177058
    """
    r = _check_rates(rate)
    out = np.where(
        r >= R_STAR, _gamma_hi(r), 1.0 - (1.0 - GAMMA_R_STAR) * np.minimum(r, R_STAR) / R_STAR
    )
    return float(out) if out.ndim == 0 else out


def gamma_inverse(distortion: ArrayLike) -> np.ndarray | float:
    """Smallest rate R (bits/entry) with Γ(R) ≤ D: the inverse of :func:`gamma`.

    Distortions ≥ 1 need rate 0; D must be > 0.
    """
    d = np.asarray(distortion, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"distortion must be finite and > 0, got {distortion!r}")
    dc = np.minimum(d, 1.0)
    # high-rate branch: 2x − x² = D with x = 2^{−2R}, x = 1 − sqrt(1 − D)
    x = 1.0 - np.sqrt(1.0 - np.minimum(dc, GAMMA_R_STAR))
    r_hi = -0.5 * np.log2(x)
    r_lo = R_STAR * (1.0 - dc) / (1.0 - GAMMA_R_STAR)
    out = np.where(dc >= GAMMA_R_STAR, r_lo, r_hi)
    return float(out) if out.ndim == 0 else out


def shannon_distortion(rate: ArrayLike, variance: float = 1.0) -> np.ndarray | float:
    """Shannon distortion–rate function of a Gaussian source: D(R) = σ²·2^{−2R}."""
    r = _check_rates(rate)
    out = variance * np.exp2(-2.0 * r)
    return float(out) if out.ndim == 0 else out


def shannon_rate(distortion: ArrayLike, variance: float = 1.0) -> np.ndarray | float:
    """Gaussian rate–distortion function R(D) = max(0, ½·log2(σ²/D)) in bits per entry."""
    d = np.asarray(distortion, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"distortion must be finite and > 0, got {distortion!r}")
    out = np.maximum(0.0, 0.5 * np.log2(variance / d))
    return float(out) if out.ndim == 0 else out


def matmul_lower_bound(n: int, a: int, b: int, rate: ArrayLike) -> np.ndarray | float:
    """Lower bound on the product error of iid Gaussian matrices: ``n·a·b·Γ(R)``.

    For ``A ∈ ℝ^{n×a}``, ``B ∈ ℝ^{n×b}`` with iid N(0, 1) entries, every pair of encoders that
    describe ``A`` and ``B`` separately with ``R`` bits per entry and every decoder ``Ĉ`` satisfy

        E‖AᵀB − Ĉ‖_F² ≥ n·a·b·Γ(R).

    Which bound this is: arXiv 2410.13780 states in its abstract a *non-asymptotic* lower bound
    on this mean-squared error for iid Gaussian matrices, achieved as n → ∞ by its nested-lattice
    scheme; THEORY.md §1 restates it as above, for any n, a, b. We could not retrieve the exact
    theorem text (its precise conditions on a, b or on unequal rates), so this function implements
    the bound in that form, for equal rates on both sides, and nothing sharper. Divided by
    ``n·a·b`` it is Γ(R), the quantity every ``gap_db`` in this package is measured against.

    Parameters
    ----------
    n, a, b : int
        Inner dimension and numbers of columns of A and B (≥ 1).
    rate : array_like
        Rate R in bits per entry on each side (≥ 0).

    Returns
    -------
    float or numpy.ndarray
        The bound on ``E‖AᵀB − Ĉ‖_F²`` (same units as the squared entries of ``AᵀB``).

    References
    ----------
    .. [1] O. Ordentlich, Y. Polyanskiy, "Optimal quantization for matrix multiplication",
       arXiv:2410.13780, abstract and main converse result.

    Examples
    --------
    >>> float(matmul_lower_bound(4096, 256, 256, 2.0)) == 4096 * 256 * 256 * 0.12109375
    True
    """
    for name, v in (("n", n), ("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    out = float(n) * float(a) * float(b) * np.asarray(gamma(rate), dtype=np.float64)
    return float(out) if out.ndim == 0 else out


__all__ += ["matmul_lower_bound"]
