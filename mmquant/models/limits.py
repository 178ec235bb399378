"""Per-layer limits of the quantized products of MiniLM: ``W·X`` of every linear layer, ``Q_h K_hᵀ``.

For a product ``AᵀB`` (``A ∈ ℝ^{n×a}``, ``B ∈ ℝ^{n×b}``, columns of covariances ``Σ_A``,
``Σ_B``) with ``A`` coded at ``R_A`` and ``B`` at ``R_B`` bits per entry, the error per product
entry and per inner coordinate is, to first order, ``[tr(Σ_{E_A} Σ_B) + tr(Σ_{E_B} Σ_A)]/n``
(``Σ_E`` the covariance of a factor's coding error). Two limits for Gaussian factors:

``generic``
    Each factor is coded knowing only its own covariance (calibration-free): the best code of
    ``A`` at ``R_A`` is reverse waterfilling on the eigenvalues of ``Σ_A``, whose error has
    covariance ``U diag(min(θ, λ_i)) Uᵀ``; it meets the other factor's energy. At high rate this
    is :func:`mmquant.theory.highrate.matmul_highrate`
    ``2^{−2R}·[det(Σ_A)^{1/n} tr(Σ_B) + det(Σ_B)^{1/n} tr(Σ_A)]/n`` (equal rates); the waterfilled
    form stays finite and meaningful when a covariance is singular (``output.dense`` of MiniLM:
    ``Σ_W = W_2ᵀW_2/384`` has rank 384 of 1536).
``aware``
    Each factor's code knows both covariances (the covariance-aware codes of
    :mod:`mmquant.models.recipes`): coding ``A`` with its error weighted by ``Σ_B`` is reverse
    waterfilling on the eigenvalues ``μ_i`` of ``Σ_A Σ_B`` (the same for both factors), so
    ``D = wf(μ, R_A) + wf(μ, R_B)`` with ``wf`` :func:`~mmquant.theory.highrate.waterfill_distortion`.
    Never above ``generic`` (AM–GM).

Both are reported as *relative* errors ``‖ÂᵀB̂ − AᵀB‖²_F / ‖AᵀB‖²_F`` in expectation, i.e.
``n·D / tr(Σ_A Σ_B)``. For a linear layer ``A = Wᵀ`` (``Σ_W = WᵀW/rows``) and ``B = Xᵀ``
(``Σ_X`` from calibration); for a head ``A = Q_hᵀ``, ``B = K_hᵀ`` (all tokens pooled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmquant.theory.highrate import matmul_highrate, waterfill
from mmquant.validation import check_float

__all__ = [
    "ProductLimit",
    "product_limit",
    "product_error",
    "weight_covariance",
]


@dataclass(frozen=True)
class ProductLimit:
    """Limits of one product at rates ``(rate_a, rate_b)``, as relative errors.

    Attributes
    ----------
    generic : float
        Calibration-free limit (waterfilled on each factor's own covariance).
    aware : float
        Limit of codes that know both covariances (waterfilling on eig(Σ_A Σ_B)).
    highrate : float
        :func:`~mmquant.theory.highrate.matmul_highrate` at the mean of the two rates (the issue's
        formula; 0 when a covariance is singular).
    rate_a, rate_b : float
        Bits per entry of each factor.
    """

    generic: float
    aware: float
    highrate: float
    rate_a: float
    rate_b: float


def weight_covariance(w: np.ndarray) -> np.ndarray:
    """``Σ_W = WᵀW / rows`` (float64, ``in × in``) of a weight ``[out, in]``."""
    w64 = np.asarray(w, dtype=np.float64)
    if w64.ndim != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {w64.shape}")
    s = w64.T @ w64 / w64.shape[0]
    return 0.5 * (s + s.T)


def _check_cov(c: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(c, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or Inf")
    return 0.5 * (m + m.T)


def _error_cov_trace(cov_own: np.ndarray, cov_other: np.ndarray, rate: float) -> float:
    """``tr(Σ_E Σ_other)`` for the waterfilling code of a factor with covariance ``cov_own``."""
    lam, u = np.linalg.eigh(cov_own)
    lam = np.clip(lam, 0.0, None)
    if lam.max() <= 0:
        return 0.0
    d = waterfill(lam, rate).component_distortions
    proj = np.einsum("ij,jk,ki->i", u.T, cov_other, u)  # uᵢᵀ Σ_other uᵢ
    return float(np.sum(d * proj))


def product_limit(
    cov_a: np.ndarray, cov_b: np.ndarray, rate_a: float, rate_b: float | None = None
) -> ProductLimit:
    """Generic and covariance-aware limits of the product ``AᵀB`` (relative squared error).

    Parameters
    ----------
    cov_a, cov_b : numpy.ndarray
        ``n×n`` covariances of the columns of ``A`` and ``B`` (``Σ_W`` and ``Σ_X``).
    rate_a, rate_b : float
        Bits per entry of each factor (``rate_b`` defaults to ``rate_a``).

    Returns
    -------
    ProductLimit
    """
    a = _check_cov(cov_a, "cov_a")
    b = _check_cov(cov_b, "cov_b")
    if a.shape != b.shape:
        raise ValueError(f"cov_a {a.shape} and cov_b {b.shape} must have the same size")
    ra = check_float(rate_a, "rate_a", 0.0)
    rb = ra if rate_b is None else check_float(rate_b, "rate_b", 0.0)
    n = a.shape[0]
    power = float(np.trace(a @ b))  # E (aᵢᵀb_j)² per product entry
    if power <= 0:
        raise ValueError("the product is identically zero: relative error undefined")
    generic = (_error_cov_trace(a, b, ra) + _error_cov_trace(b, a, rb)) / power
    # eigenvalues of Σ_A Σ_B = those of Σ_A^{1/2} Σ_B Σ_A^{1/2} (real, ≥ 0)
    la, ua = np.linalg.eigh(a)
    ha = (ua * np.sqrt(np.clip(la, 0.0, None))) @ ua.T
    mu = np.clip(np.linalg.eigvalsh(ha @ b @ ha), 0.0, None)
    if mu.max() <= 0:
        aware = 0.0
    else:
        aware = n * (waterfill(mu, ra).distortion + waterfill(mu, rb).distortion) / power
    r_mean = 0.5 * (ra + rb)
    highrate = n * matmul_highrate(r_mean, a, b) / power
    return ProductLimit(
        generic=float(generic),
        aware=float(aware),
        highrate=float(highrate),
        rate_a=ra,
        rate_b=rb,
    )


def product_error(a: np.ndarray, b: np.ndarray, a_hat: np.ndarray, b_hat: np.ndarray) -> float:
    """Measured relative error ``‖Âᵀ B̂ − AᵀB‖²_F / ‖AᵀB‖²_F`` (float64).

    Arrays are given as ``[rows, n]`` (``W``, ``X`` with tokens as rows, ``Q_h``, ``K_h``): the
    product is ``a @ b.T``.
    """
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ah, bh = np.asarray(a_hat, np.float64), np.asarray(b_hat, np.float64)
    if a64.shape != ah.shape or b64.shape != bh.shape or a64.shape[1] != b64.shape[1]:
        raise ValueError(
            f"shapes {a64.shape}, {b64.shape}, {ah.shape}, {bh.shape}: need a, a_hat [p, n] and "
            "b, b_hat [q, n]"
        )
    ref = a64 @ b64.T
    power = float(np.sum(ref * ref))
    if power <= 0:
        raise ValueError("the product is identically zero: relative error undefined")
    err = ah @ bh.T - ref
    return float(np.sum(err * err) / power)
