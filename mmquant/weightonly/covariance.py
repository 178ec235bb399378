"""Calibration covariance Σ_X for weight-only quantization: checks, dead inputs, damping, Cholesky.

Conventions (arXiv 2601.17187, WaterSIC arXiv 2603.04956): a layer ``y = Wx`` with
``W ∈ ℝ^{a×n}`` and ``Σ_X = E[xxᵀ] ∈ ℝ^{n×n}``; the distortion of ``Ŵ`` is the weighted MSE

    WMSE = tr((W − Ŵ)·Σ_X·(W − Ŵ)ᵀ) / (a·n).

Preparation, in float64:

1. *dead* inputs (``Σ_jj ≤ dead·median(diag Σ)``) are dropped; their columns of ``Ŵ`` are zero;
2. damping ``H = Σ + δI``, ``δ = damp·mean(diag Σ)``, multiplied by 10 until the Cholesky
   factorisation ``H = LLᵀ`` (L lower) succeeds; a ``δ`` above ``mean(diag Σ)`` means Σ is far
   from positive semidefinite and raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.validation import as_matrix, check_float

__all__ = ["Prepared", "check_problem", "prepare_covariance", "wmse"]

_CHUNK = 1 << 20  # entries per row chunk of wmse


def check_problem(w: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a weight matrix and its input covariance; return both in float64.

    Raises
    ------
    ValueError
        Shapes that do not match (``W`` is ``a×n``, Σ must be ``n×n``), NaN/Inf, a Σ that is not
        symmetric (relative asymmetry > 1e-6) or has a negative diagonal.
    """
    w64 = as_matrix(w, name="W").astype(np.float64)
    s64 = as_matrix(sigma, name="sigma").astype(np.float64)
    n = w64.shape[1]
    if s64.shape != (n, n):
        raise ValueError(
            f"sigma must be n×n with n = W.shape[1] = {n} (inputs of the layer), got {s64.shape}"
        )
    scale = float(np.abs(s64).max())
    if scale > 0 and float(np.abs(s64 - s64.T).max()) > 1e-6 * scale:
        raise ValueError("sigma is not symmetric (|Σ − Σᵀ| > 1e-6·max|Σ|)")
    if np.any(np.diag(s64) < 0):
        raise ValueError("sigma has a negative diagonal entry: not a covariance")
    sym = s64 + s64.T
    del s64
    sym *= 0.5
    return w64, sym


@dataclass(frozen=True, eq=False)
class Prepared:
    """A damped, factorised covariance restricted to its live inputs.

    Attributes
    ----------
    live : numpy.ndarray
        ``(n,)`` bool, False for the dropped (dead) inputs.
    sigma : numpy.ndarray
        Σ restricted to the live inputs (undamped), float64.
    chol : numpy.ndarray
        Lower Cholesky factor L of ``Σ_live + δI``.
    damping : float
        The δ that was used (absolute).
    """

    live: np.ndarray
    sigma: np.ndarray
    chol: np.ndarray
    damping: float


def prepare_covariance(sigma: np.ndarray, *, damp: float = 1e-4, dead: float = 1e-3) -> Prepared:
    """Drop dead inputs, damp, and factorise ``Σ + δI = LLᵀ`` (see the module docstring).

    Parameters
    ----------
    sigma : numpy.ndarray
        Symmetric ``n×n`` float64 covariance (as returned by :func:`check_problem`).
    damp : float
        Initial relative damping δ / mean(diag Σ) (≥ 0; 0 tries an undamped factorisation first).
    dead : float
        Relative threshold for dead inputs.

    Raises
    ------
    ValueError
        No live input, or Σ too far from positive semidefinite.
    """
    d0 = check_float(damp, "damp", 0.0, 1.0)
    thr = check_float(dead, "dead", 0.0, 1.0)
    diag = np.diag(sigma)
    med = float(np.median(diag))
    live = diag > thr * med if med > 0 else diag > 0
    if not np.any(live):
        raise ValueError("sigma has no live input feature (every diagonal entry is ~0)")
    s = sigma if bool(np.all(live)) else sigma[np.ix_(live, live)]
    mean_diag = float(np.mean(np.diag(s)))
    delta = d0 * mean_diag
    diag_idx = np.diag_indices(s.shape[0])
    while True:
        try:
            h = s.copy()
            h[diag_idx] += delta
            chol = np.linalg.cholesky(h)
            del h
            if np.all(np.isfinite(chol)) and np.all(np.diag(chol) > 0):
                break
        except np.linalg.LinAlgError:
            pass
        delta = max(delta * 10.0, 1e-8 * mean_diag)
        if delta > mean_diag:
            raise ValueError(
                "sigma is far from positive semidefinite: Cholesky failed even with damping "
                "δ = mean(diag Σ)"
            )
    return Prepared(live=live, sigma=s, chol=chol, damping=float(delta))


def wmse(w: np.ndarray, w_hat: np.ndarray, sigma: np.ndarray) -> float:
    """Weighted MSE ``tr((W − Ŵ)Σ(W − Ŵ)ᵀ)/(a·n)`` (float64).

    Examples
    --------
    >>> wmse(np.ones((2, 2)), np.zeros((2, 2)), np.eye(2))
    1.0
    """
    w = np.asarray(w)
    w_hat = np.asarray(w_hat)
    sigma = np.asarray(sigma, np.float64)
    a = w.shape[0]
    rows = max(1, _CHUNK // max(w.shape[1], 1))
    if rows >= a:  # one piece (small matrices: the plain formula)
        e = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
        return float(np.sum((e @ sigma) * e) / e.size)
    total = 0.0
    for r0 in range(0, a, rows):  # rows a chunk at a time: no a×n temporaries
        e = np.asarray(w[r0 : r0 + rows], np.float64) - np.asarray(
            w_hat[r0 : r0 + rows], np.float64
        )
        total += float(np.sum((e @ sigma) * e))
    return total / w.size
