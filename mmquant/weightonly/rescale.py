"""Diagonal rescalers T (rows) and Γ (columns) that shrink the WMSE of a quantized matrix.

Given the original ``W`` and a reconstruction ``M`` (``a×n``), find diagonal ``T``, ``Γ`` minimising

    J(T, Γ) = tr((W − T·M·Γ)·Σ·(W − T·M·Γ)ᵀ),

alternating two closed forms (each step cannot increase J):

* rows, Γ fixed (``U = M·Γ``): ``t_r = ⟨w_r, u_r⟩_Σ / ⟨u_r, u_r⟩_Σ``;
* columns, T fixed (``M' = T·M``): ``Γ = [(M'ᵀM') ∘ Σ]⁻¹ · diag(M'ᵀ·W·Σ)``  (∘ the entrywise
  product), an ``n×n`` linear solve.

Γ merges into WaterSIC's per-column scale (free); T costs one float16 per row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_rescalers"]


def _fit_rows(w_sigma: np.ndarray, u: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    num = np.sum(w_sigma * u, axis=1)
    den = np.sum((u @ sigma) * u, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def _fit_cols(w_sigma: np.ndarray, m: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    n = m.shape[1]
    gram = (m.T @ m) * sigma
    rhs = np.sum(m * w_sigma, axis=0)
    used = np.diag(gram) > 0
    out = np.ones(n)
    if not np.any(used):
        return out
    g = gram[np.ix_(used, used)]
    g = g + 1e-10 * float(np.mean(np.diag(g))) * np.eye(g.shape[0])
    try:
        out[used] = np.linalg.solve(g, rhs[used])
    except np.linalg.LinAlgError:
        out[used] = np.linalg.lstsq(g, rhs[used], rcond=None)[0]
    return out


def fit_rescalers(
    w: np.ndarray,
    m: np.ndarray,
    sigma: np.ndarray,
    *,
    rows: bool = True,
    cols: bool = True,
    iterations: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal rescalers ``(t, gamma)`` minimising ``tr((W − TMΓ)Σ(W − TMΓ)ᵀ)``.

    Parameters
    ----------
    w, m : numpy.ndarray
        ``(a, n)`` original weights and reconstruction (float64).
    sigma : numpy.ndarray
        ``(n, n)`` covariance Σ_X.
    rows, cols : bool
        Which rescalers to fit (the other stays at 1).
    iterations : int
        Alternations (one suffices when only one side is fitted).

    Returns
    -------
    t : numpy.ndarray
        ``(a,)`` row factors.
    gamma : numpy.ndarray
        ``(n,)`` column factors.
    """
    a, n = m.shape
    t = np.ones(a)
    g = np.ones(n)
    if not (rows or cols):
        return t, g
    w_sigma = w @ sigma
    its = iterations if (rows and cols) else 1
    for _ in range(its):
        if cols:
            g = _fit_cols(w_sigma, t[:, None] * m, sigma)
        if rows:
            t = _fit_rows(w_sigma, m * g[None, :], sigma)
    return t, g
