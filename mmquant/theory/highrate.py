"""High-rate limits of quantized matrix multiplication and the rate loss of scalar formats.

Weight-only quantization (layer ``y = Wx``, ``W ∈ ℝ^{a×n}``, input covariance ``Σ_X = E[xxᵀ]``)
is weighted-MSE source coding: the distortion is the WMSE ``tr((W−Ŵ)Σ_X(W−Ŵ)ᵀ)/(a·n)``. For
iid ``N(0, σ²)`` weights the rate–distortion function is given by **reverse waterfilling** over the
eigenvalues ``λ_i`` of ``Σ_X`` (water level ``θ``)::

    D(θ) = (1/n) Σ_i min(θ, σ²λ_i),     R(θ) = (1/n) Σ_i ½·log2⁺(σ²λ_i / θ),

valid at every rate. At high rate (``θ ≤ σ²·min λ_i``) it is ``D*(R) = σ²·2^{−2R}·det(Σ_X)^{1/n}``.

Scalar formats are compared with ``D(R) = 2^{−2R}`` (unit variance) through their *rate loss*
``bits stored − R_eff``, ``R_eff = −½·log2 ε``, ``ε`` = MSE / variance. For absmax INT the paper's
heuristic is ``ε ≈ (1 − 1/g)·E[M_g²]/(12·qmax²)`` (``M_g`` the largest of ``g`` iid ``|N(0,1)|``);
for every block format (INT, MXFP4, NVFP4 ...) :func:`block_format_mse` integrates the exact
per-block error numerically over the Gaussian.

References
----------
.. [1] O. Ordentlich, Y. Polyanskiy, "High-rate quantized matrix multiplication: theory and
   practice", arXiv:2601.17187.
.. [2] WaterSIC, arXiv:2603.04956.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr

from mmquant.formats.elements import FORMATS, MX_ELEMENTS, round_to_format, value_table
from mmquant.validation import check_choice, check_float, check_int

__all__ = [
    "Waterfill",
    "waterfill",
    "waterfill_distortion",
    "waterfill_rate",
    "weight_only_highrate",
    "matmul_highrate",
    "expected_max_sq",
    "absmax_int_mse_heuristic",
    "block_format_mse",
    "rate_loss",
    "E2M1_LEVELS",
]

_E2M1 = FORMATS["e2m1"]  # the element of MXFP4 and NVFP4
_E4M3 = FORMATS["e4m3"]  # NVFP4's block scale
#: Non-negative magnitudes of the FP4 element format E2M1 (OCP MX v1.0), read from its table.
E2M1_LEVELS = tuple(float(v) for v in value_table(_E2M1)[: 1 << (_E2M1.bits - 1)])
_LOG2 = math.log(2.0)


def _check_eigs(eigenvalues: ArrayLike, sigma2: float) -> np.ndarray:
    lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if lam.size == 0:
        raise ValueError("eigenvalues is empty")
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contain NaN or Inf")
    scale = max(float(np.abs(lam).max()), 1e-300)
    if lam.min() < -1e-9 * scale:
        raise ValueError(f"eigenvalues must be ≥ 0 (a covariance), got min {lam.min():.3g}")
    s2 = check_float(sigma2, "sigma2", 0.0, lo_open=True)
    return np.clip(lam, 0.0, None) * s2


@dataclass(frozen=True)
class Waterfill:
    """Reverse-waterfilling solution for one rate or distortion.

    Attributes
    ----------
    theta : float
        Water level θ (distortion units).
    rate : float
        R(θ) in bits per weight (averaged over the ``n`` components).
    distortion : float
        D(θ) (WMSE per weight).
    component_rates : numpy.ndarray
        ½·log2⁺(σ²λ_i/θ) in bits, one per eigenvalue (in the input order).
    component_distortions : numpy.ndarray
        min(θ, σ²λ_i), one per eigenvalue.
    """

    theta: float
    rate: float
    distortion: float
    component_rates: np.ndarray
    component_distortions: np.ndarray


def _solution(v: np.ndarray, theta: float) -> Waterfill:
    with np.errstate(divide="ignore"):
        rates = np.where(v > theta, 0.5 * np.log2(np.where(v > 0, v, 1.0) / theta), 0.0)
    dist = np.minimum(theta, v)
    return Waterfill(
        theta=float(theta),
        rate=float(rates.mean()),
        distortion=float(dist.mean()),
        component_rates=rates,
        component_distortions=dist,
    )


def waterfill(
    eigenvalues: ArrayLike,
    rate: float | None = None,
    *,
    distortion: float | None = None,
    sigma2: float = 1.0,
) -> Waterfill:
    """Reverse waterfilling over the eigenvalues of Σ_X, for a rate or for a distortion.

    ``D(θ) = (1/n)Σ min(θ, σ²λ_i)``, ``R(θ) = (1/n)Σ ½log2⁺(σ²λ_i/θ)``; exact at every rate
    (closed form on the sorted eigenvalues, no iteration).

    Parameters
    ----------
    eigenvalues : array_like
        Eigenvalues λ_i ≥ 0 of Σ_X (zeros allowed: those components need no rate).
    rate : float, optional
        Rate R in bits per weight (≥ 0). Give exactly one of ``rate`` and ``distortion``.
    distortion : float, optional
        Target WMSE per weight (> 0).
    sigma2 : float
        Variance σ² of the iid Gaussian weights.

    Returns
    -------
    Waterfill

    References
    ----------
    arXiv:2601.17187 (weight-only quantization); Cover & Thomas, Thm. 10.3.3.

    Examples
    --------
    >>> round(waterfill([4, 1, 0.25, 0.0625], 0.5).distortion, 9)
    0.328125
    >>> round(waterfill([4, 1, 0.25, 0.0625], 2.0).distortion, 9)
    0.03125
    """
    v = _check_eigs(eigenvalues, sigma2)
    if (rate is None) == (distortion is None):
        raise ValueError("give exactly one of rate and distortion")
    n = v.size
    vmax = float(v.max())
    if vmax <= 0:
        raise ValueError("all eigenvalues are zero: nothing to quantize")
    if rate is not None:
        r = check_float(rate, "rate", 0.0)
        if r == 0:
            return _solution(v, vmax)
        # k largest components active: log2 θ = (Σ_{i<k} log2 v_(i) − 2nR)/k, valid if
        # v_(k) ≤ θ ≤ v_(k−1) (descending order).
        vs = np.sort(v[v > 0])[::-1]
        cum = np.cumsum(np.log2(vs))
        k = np.arange(1, vs.size + 1)
        log_theta = (cum - 2.0 * n * r) / k
        nxt = np.concatenate([np.log2(vs[1:]), [-np.inf]])
        ok = np.nonzero((log_theta <= np.log2(vs) + 1e-12) & (log_theta >= nxt - 1e-12))[0]
        theta = float(np.exp2(log_theta[ok[0]] if ok.size else log_theta[-1]))
        return _solution(v, theta)
    d = check_float(distortion, "distortion", 0.0, lo_open=True)
    if d >= v.mean():
        return _solution(v, vmax)
    # θ in [v_(k), v_(k+1)] (ascending): D = (Σ_{i≤k} v_(i) + (n−k)θ)/n.
    va = np.sort(v)
    cum = np.concatenate([[0.0], np.cumsum(va)])
    k = np.arange(0, n)
    theta_k = (n * d - cum[:-1]) / (n - k)
    lo = np.concatenate([[0.0], va[:-1]])
    ok = np.nonzero((theta_k >= lo * (1 - 1e-12)) & (theta_k <= va * (1 + 1e-12)))[0]
    theta = float(theta_k[ok[0]] if ok.size else theta_k[0])
    return _solution(v, theta)


def waterfill_distortion(eigenvalues: ArrayLike, rate: float, *, sigma2: float = 1.0) -> float:
    """Smallest WMSE per weight at ``rate`` bits/weight (reverse waterfilling, any rate).

    Examples
    --------
    >>> round(waterfill_distortion([4, 1, 0.25, 0.0625], 2.0), 9)
    0.03125
    """
    return waterfill(eigenvalues, rate, sigma2=sigma2).distortion


def waterfill_rate(eigenvalues: ArrayLike, distortion: float, *, sigma2: float = 1.0) -> float:
    """Smallest rate (bits/weight) reaching WMSE ``distortion``: R_limit(D), the inverse curve.

    The gap of a scheme in bits is ``measured rate − waterfill_rate(λ, measured WMSE)``.

    Examples
    --------
    >>> round(waterfill_rate([4, 1, 0.25, 0.0625], 0.328125), 9)
    0.5
    """
    return waterfill(eigenvalues, distortion=distortion, sigma2=sigma2).rate


def weight_only_highrate(eigenvalues: ArrayLike, rate: float, *, sigma2: float = 1.0) -> float:
    """High-rate weight-only limit ``D*(R) = σ²·2^{−2R}·det(Σ_X)^{1/n}``.

    Equal to the waterfilling distortion once ``θ = D*(R) ≤ σ²·min λ_i``; 0 if Σ_X is singular.

    Examples
    --------
    >>> weight_only_highrate([4, 1, 0.25, 0.0625], 2.0)
    0.03125
    """
    v = _check_eigs(eigenvalues, 1.0)
    r = check_float(rate, "rate", 0.0)
    s2 = check_float(sigma2, "sigma2", 0.0, lo_open=True)
    if np.any(v <= 0):
        return 0.0
    return float(s2 * 2.0 ** (-2.0 * r) * np.exp2(np.mean(np.log2(v))))


def matmul_highrate(
    rate: float,
    cov_a: ArrayLike | None = None,
    cov_b: ArrayLike | None = None,
) -> float:
    """High-rate limit of generic (calibration-free) MatMul, both factors quantized at ``R``.

    For ``A ∈ ℝ^{n×a}``, ``B ∈ ℝ^{n×b}`` whose columns have covariances ``Σ_A``, ``Σ_B``, each
    encoded at ``R`` bits/entry without knowledge of the other, the error of ``AᵀB`` per product
    entry and per inner coordinate is, at high rate,

        D_MM(R) ≈ 2^{−2R}·[det(Σ_A)^{1/n}·tr(Σ_B) + det(Σ_B)^{1/n}·tr(Σ_A)] / n,

    since the best encoder of each factor leaves a white error of power ``2^{−2R}·det^{1/n}`` per
    coordinate, which meets the other factor's energy. With identity covariances this is
    ``2·2^{−2R}``, the leading term of Γ(R) = 2·2^{−2R} − 2^{−4R} (arXiv:2410.13780). This is our
    restatement of the paper's generic high-rate bound; the paper's exact constants may differ.

    Parameters
    ----------
    rate : float
        Bits per entry of each factor.
    cov_a, cov_b : array_like, optional
        ``n×n`` covariances of the columns of A and B (default identity).

    Examples
    --------
    >>> matmul_highrate(4.0)
    0.0078125
    """
    r = check_float(rate, "rate", 0.0)
    if cov_a is None and cov_b is None:
        return 2.0 * 2.0 ** (-2.0 * r)
    mats = []
    for name, c in (("cov_a", cov_a), ("cov_b", cov_b)):
        if c is None:
            mats.append(None)
            continue
        m = np.asarray(c, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{name} must be a square matrix, got shape {m.shape}")
        mats.append(m)
    n = next(m.shape[0] for m in mats if m is not None)
    a, b = (np.eye(n) if m is None else m for m in mats)
    if a.shape != b.shape:
        raise ValueError(f"cov_a {a.shape} and cov_b {b.shape} must have the same size")

    def gm(m: np.ndarray) -> float:
        ev = np.linalg.eigvalsh(0.5 * (m + m.T))
        return 0.0 if ev.min() <= 0 else float(np.exp(np.mean(np.log(ev))))

    return float(2.0 ** (-2.0 * r) * (gm(a) * np.trace(b) + gm(b) * np.trace(a)) / n)


# ---------------------------------------------------------------------------------------------
# Scalar formats on N(0, 1) data
# ---------------------------------------------------------------------------------------------
_PHI_NORM = 1.0 / math.sqrt(2.0 * math.pi)


def _max_grid(g: int, num: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Grid over m and density of M_g = max of g iid |N(0,1)| (trapezoid weights included)."""
    m = np.linspace(1e-6, 9.0, num)
    h = m[1] - m[0]
    cdf1 = 2.0 * ndtr(m) - 1.0
    pdf = g * cdf1 ** (g - 1) * 2.0 * _PHI_NORM * np.exp(-0.5 * m * m)
    w = pdf * h
    w[0] *= 0.5
    w[-1] *= 0.5
    return m, w


@lru_cache(maxsize=64)
def expected_max_sq(group: int) -> float:
    """``E[M_g²]`` for ``M_g`` the largest of ``g`` iid ``|N(0,1)|`` (numerical integration).

    Examples
    --------
    >>> round(expected_max_sq(32), 4)
    5.7095
    """
    g = check_int(group, "group", 1)
    m, w = _max_grid(g)
    return float(np.sum(w * m * m))


def absmax_int_mse_heuristic(bits: int, group: int) -> float:
    """Heuristic relative MSE of absmax INT on N(0,1): ``(1 − 1/g)·E[M_g²]/(12·qmax²)``.

    ``qmax = 2^{b−1} − 1``; the block maximum is reproduced exactly (hence ``1 − 1/g``) and the
    other entries see a uniform error of step ``M_g/qmax`` (arXiv:2601.17187, §absmax INT).

    Examples
    --------
    >>> round(absmax_int_mse_heuristic(4, 32), 6)
    0.009407
    """
    b = check_int(bits, "bits", 2, 16)
    g = check_int(group, "group", 1)
    qmax = 2 ** (b - 1) - 1
    return (1.0 - 1.0 / g) * expected_max_sq(g) / (12.0 * qmax * qmax)


def _nearest(levels: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Nearest of sorted symmetric ``levels`` (saturating at the ends)."""
    mid = 0.5 * (levels[1:] + levels[:-1])
    return levels[np.searchsorted(mid, u)]


def _e4m3_round(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to E4M3 (ties to even, saturating at 448), as float64."""
    return round_to_format(np.asarray(x, np.float64), _E4M3).astype(np.float64)


def block_format_mse(
    kind: str,
    *,
    bits: int = 4,
    group: int = 32,
    tensor_amax: float | None = None,
    grid_points: int = 1200,
) -> float:
    """Relative MSE of a block-scaled scalar format on iid N(0, 1) data, by numerical integration.

    Conditioned on the block maximum ``M`` (density of the max of ``g`` iid ``|N(0,1)|``), the
    block's scale ``s(M)`` is fixed; the largest entry is quantized at ``M`` and the other ``g − 1``
    are iid ``|N(0,1)|`` truncated to ``[0, M]``::

        ε = (1/g)·E_M[ e(M) + (g − 1)·E[e(X) | |X| ≤ M] ],   e(x) = (x − s·Q(x/s))².

    Parameters
    ----------
    kind : {"int", "mxfp4", "nvfp4"}
        ``"int"``: absmax INT, ``s = M/qmax``, levels ``−qmax..qmax`` (scale stored exactly).
        ``"mxfp4"``: E2M1 elements, ``s = 2^{⌊log2 M⌋ − 2}`` (E8M0 scale), saturation at 6.
        ``"nvfp4"``: E2M1 elements, ``s = s_t·E4M3(M/(6·s_t))``, ``s_t = tensor_amax/(448·6)``.
    bits : int
        Element bits for ``"int"``.
    group : int
        Block size g (32 for MXFP4, 16 for NVFP4).
    tensor_amax : float, optional
        Largest magnitude in the tensor (NVFP4's FP32 tensor scale); default ``E[M]`` for a
        tensor of 2^20 entries (≈ 5.0).
    grid_points : int
        Points of each integration grid (accuracy ~1e-4 relative at 1200).

    Returns
    -------
    float
        ε = MSE / variance (dimensionless).

    Examples
    --------
    >>> round(block_format_mse("int", bits=4, group=32) / absmax_int_mse_heuristic(4, 32), 2)
    1.0
    """
    check_choice(kind, "kind", ("int", "mxfp4", "nvfp4"))
    g = check_int(group, "group", 1)
    npts = check_int(grid_points, "grid_points", 100)
    m, wm = _max_grid(g, num=npts)
    keep = wm > 1e-14 * wm.max()
    m, wm = m[keep], wm[keep]
    if kind == "int":
        b = check_int(bits, "bits", 2, 16)
        qmax = 2 ** (b - 1) - 1
        levels = np.arange(-qmax, qmax + 1, dtype=np.float64)
        scale = m / qmax
    else:
        pos = np.asarray(E2M1_LEVELS)
        levels = np.concatenate([-pos[:0:-1], pos])
        top = _E2M1.max_normal  # 6
        if kind == "mxfp4":
            scale = np.exp2(np.floor(np.log2(m)) - float(MX_ELEMENTS["e2m1"].emax))
        else:
            amax_t = 5.0 if tensor_amax is None else check_float(tensor_amax, "tensor_amax", 0.0)
            s_t = amax_t / (_E4M3.max_normal * top)
            scale = s_t * _e4m3_round(m / (top * s_t))
            scale = np.where(scale > 0, scale, s_t * _E4M3.min_subnormal)
    # inner integral over x in [0, M] for each M (midpoint rule on a per-M grid)
    t = (np.arange(npts) + 0.5) / npts  # fractions of M
    x = m[:, None] * t[None, :]
    dens = 2.0 * _PHI_NORM * np.exp(-0.5 * x * x) * (m[:, None] / npts)
    s = scale[:, None]
    err = (x - s * _nearest(levels, x / s)) ** 2
    mass = 2.0 * ndtr(m) - 1.0
    inner = (err * dens).sum(axis=1) / mass
    e_max = (m - scale * _nearest(levels, m / scale)) ** 2
    eps = np.sum(wm * (e_max + (g - 1) * inner)) / g
    return float(eps / np.sum(wm))


def rate_loss(bits_stored: float, relative_mse: float) -> float:
    """Rate loss ``bits_stored − R_eff`` with ``R_eff = −½·log2 ε`` (bits per entry).

    Examples
    --------
    >>> rate_loss(4.0, 2.0**-8)
    0.0
    """
    b = check_float(bits_stored, "bits_stored", 0.0)
    eps = check_float(relative_mse, "relative_mse", 0.0, lo_open=True)
    return b + 0.5 * math.log2(eps)
