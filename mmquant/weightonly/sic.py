"""Successive interference cancellation (SIC) in the ``Y = W·L`` basis, shared by GPTQ and WaterSIC.

With ``Σ ≈ LLᵀ`` (L lower) the WMSE is ``‖(W − Ŵ)L‖_F²/(a·n)`` and column ``i`` of ``(W − Ŵ)L`` is
``Σ_{k≥i} (W − Ŵ)_k L_ki``. Processing columns **last to first**, the residual target of column
``j`` is ``Y_j = W_j L_jj + Σ_{k>j} (W − Ŵ)_k L_kj``; quantizing it to ``ŵ_j L_jj`` leaves exactly
the scalar quantizer's error in column ``j`` of ``(W − Ŵ)L``. After each column,
``Y[:, :j] −= ŵ_j ⊗ L[j, :j]``. GPTQ/LDLQ quantizes ``Y_j/L_jj`` on a W-domain grid; WaterSIC
quantizes ``Y_j`` with one Y-domain step ``c`` (arXiv 2601.17187 §weight-only; THEORY.md §8).

The updates are blocked (lazy batch updates as in GPTQ): inside a block of columns they are
rank-1; the block's effect on the earlier columns is one matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmquant.weightonly.covariance import check_problem, prepare_covariance
from mmquant.weightonly.result import rotation_matrix

__all__ = ["Problem", "setup", "sic", "search_step", "search_rate", "sample_rows"]

#: ``quantize(j, target) -> (integer codes, reconstruction)`` for one column.
ColumnQuantizer = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Problem:
    """A weight matrix and its covariance in the working basis (live inputs, maybe rotated).

    Attributes
    ----------
    w, sigma : numpy.ndarray
        The full original W ``(a, n)`` and Σ_X ``(n, n)`` (float64).
    live : numpy.ndarray
        ``(n,)`` bool.
    wk : numpy.ndarray
        ``(a, m)`` working weights: live columns, times ``Uᵀ`` if rotated.
    sk : numpy.ndarray
        ``(m, m)`` working covariance (undamped): ``U Σ_live Uᵀ`` if rotated.
    chol : numpy.ndarray
        Lower Cholesky factor of ``sk + δI``.
    damping : float
    rotation_seed : int or None
    """

    w: np.ndarray
    sigma: np.ndarray
    live: np.ndarray
    wk: np.ndarray
    sk: np.ndarray
    chol: np.ndarray
    damping: float
    rotation_seed: int | None

    def scatter(self, zk: np.ndarray) -> np.ndarray:
        """Working-basis ``(a, m)`` codes into ``(a, n)`` (zeros for dead inputs; no copy if none)."""
        if zk.shape[1] == self.w.shape[1]:
            return zk
        out = np.zeros((self.w.shape[0], self.w.shape[1]), dtype=zk.dtype)
        out[:, self.live] = zk
        return out


def setup(
    w: object,
    sigma: object,
    *,
    damp: float = 1e-4,
    dead: float = 1e-3,
    rotate: bool = False,
    seed: int = 0,
) -> Problem:
    """Validate, drop dead inputs, optionally rotate, damp and factorise."""
    w64, s64 = check_problem(w, sigma)
    prep = prepare_covariance(s64, damp=damp, dead=dead)
    wk = w64 if bool(np.all(prep.live)) else w64[:, prep.live]
    sk = prep.sigma
    chol, delta = prep.chol, prep.damping
    rot_seed = None
    if rotate:
        rot_seed = int(seed)
        u = rotation_matrix(wk.shape[1], rot_seed)
        wk = wk @ u.T
        sk = u @ sk @ u.T
        sk = 0.5 * (sk + sk.T)
        p2 = prepare_covariance(sk, damp=damp, dead=0.0)
        chol, delta = p2.chol, p2.damping
    return Problem(
        w=w64,
        sigma=s64,
        live=prep.live,
        wk=np.ascontiguousarray(wk),
        sk=sk,
        chol=chol,
        damping=delta,
        rotation_seed=rot_seed,
    )


def sic(
    y: np.ndarray, chol: np.ndarray, quantize: ColumnQuantizer, *, block: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Run SIC on ``Y = W·L`` (``(a, m)``, not modified), last column first.

    Parameters
    ----------
    y : numpy.ndarray
        ``(a, m)`` float64 targets ``W·L``.
    chol : numpy.ndarray
        ``(m, m)`` lower factor L.
    quantize : callable
        ``quantize(j, y_j) -> (z_j, ŵ_j)``: integer codes and W-domain reconstruction of column
        ``j`` from its residual Y-domain target ``y_j`` (length ``a``).
    block : int
        Columns per lazy-update block.

    Returns
    -------
    z, w_hat : numpy.ndarray
        ``(a, m)`` int64 codes and float64 reconstruction.
    """
    a, m = y.shape
    yt = np.array(y.T, dtype=np.float64, order="C")
    zt = np.zeros((m, a), np.int64)
    wt = np.zeros((m, a), np.float64)
    for e in range(m, 0, -block):
        s = max(0, e - block)
        for j in range(e - 1, s - 1, -1):
            z, wv = quantize(j, yt[j])
            zt[j] = z
            wt[j] = wv
            if j > s:
                yt[s:j] -= np.outer(chol[j, s:j], wv)
        if s > 0:
            yt[:s] -= chol[s:e, :s].T @ wt[s:e]
    return zt.T, wt.T


def sample_rows(a: int, k: int = 768) -> np.ndarray:
    """Evenly spaced row indices used to search a step (all rows if ``a ≤ k``)."""
    if a <= k:
        return np.arange(a)
    return np.unique(np.linspace(0, a - 1, k).round().astype(np.int64))


def search_step(
    rate_of: Callable[[float], float],
    target: float,
    log2_step0: float,
    *,
    tol: float = 0.002,
    max_iter: int = 14,
    x_min: float = -math.inf,
) -> tuple[float, int]:
    """Find ``log2 step`` whose rate ``rate_of(log2 step)`` (decreasing) equals ``target``.

    Secant steps in ``log2 step`` (slope −1 at high rate) safeguarded by bisection, never below
    ``x_min`` (a step so small that the codes would leave ±2^30) nor 60 octaves from the start.

    Returns
    -------
    log2_step : float
    iterations : int
    """
    x0 = max(log2_step0, x_min)
    r0 = rate_of(x0)
    if abs(r0 - target) <= tol:
        return x0, 1
    lo, hi = (-math.inf, math.inf)  # lo: rate above target; hi: rate below target
    if r0 > target:
        lo = x0
    else:
        hi = x0
    x1 = max(x0 + (r0 - target), x_min)
    best = (abs(r0 - target), x0)
    it = 1
    while it < max_iter:
        r1 = rate_of(x1)
        it += 1
        best = min(best, (abs(r1 - target), x1))
        if abs(r1 - target) <= tol:
            return x1, it
        if r1 > target:
            lo = max(lo, x1)
        else:
            hi = min(hi, x1)
        slope = (r1 - r0) / (x1 - x0) if abs(x1 - x0) > 1e-12 else -1.0
        slope = min(max(slope, -2.0), -0.05)
        x2 = min(max(x1 + (target - r1) / slope, log2_step0 - 60.0, x_min), log2_step0 + 60.0)
        if not (lo < x2 < hi) and math.isfinite(lo) and math.isfinite(hi):
            x2 = 0.5 * (lo + hi)
        x0, r0, x1 = x1, r1, x2
    return best[1], it


def search_rate(
    codes_at: Callable[[float, np.ndarray], np.ndarray],
    wk: np.ndarray,
    n: int,
    rate: object,
    side_bits: int,
    log2_step_offset: float,
    x_min: float,
    info: dict[str, float],
    bits_of: Callable[[np.ndarray], float] | None = None,
) -> float:
    """The ``log2`` step at which a quantizer's measured rate hits ``rate`` (GPTQ and WaterSIC).

    The codes take ``rate − side_bits/(a·n)`` bits per weight, spread over the live columns of
    ``wk`` (``(a, m)``, ``m ≤ n``). The step is searched (:func:`search_step`) from
    ``log2_step_offset − R_live`` on a subsample of rows (:func:`sample_rows`), then corrected
    with all rows; the rate of a step is the ideal per-column code length of its codes.

    Parameters
    ----------
    codes_at : callable
        ``codes_at(step, rows_of_wk) -> integer codes`` of those rows at that step.
    wk : numpy.ndarray
        ``(a, m)`` working weights (not all zero).
    n : int
        Columns of the full matrix (dead ones included).
    rate : float
        Target measured rate in bits per weight, side information included (> 0).
    side_bits : int
        Bits of side information of the whole matrix.
    log2_step_offset : float
        ``log2`` of the high-rate step at rate 0 (the start is this minus the code rate).
    x_min : float
        Smallest ``log2`` step tried (codes stay within ±2^30).
    info : dict
        Receives ``target_rate`` and ``search_iterations``.
    bits_of : callable, optional
        Ideal code length (bits) of a code matrix; default the scalar coder's
        (:func:`~mmquant.weightonly.coding.column_code_bits`).

    Raises
    ------
    ValueError
        ``rate`` is not positive or is below the side information.
    """
    from mmquant.validation import check_float
    from mmquant.weightonly.coding import column_code_bits

    a = wk.shape[0]
    r = check_float(rate, "rate", 0.0, lo_open=True)
    target = r - side_bits / (a * n)
    if target <= 0:
        raise ValueError(
            f"rate {r} bits/weight is below the side information ({side_bits / (a * n):.3f})"
        )
    info["target_rate"] = r
    target_live = target * n / wk.shape[1]  # codes are spread over the live columns only
    rows = sample_rows(a)
    bits = column_code_bits if bits_of is None else bits_of

    def rate_of(log2_step: float, ww: np.ndarray = wk[rows]) -> float:
        z = codes_at(2.0**log2_step, ww)
        return bits(z) / z.size

    x, its = search_step(rate_of, target_live, log2_step_offset - target_live, x_min=x_min)
    info["search_iterations"] = its
    if rows.size < a:  # correct with all rows
        x = search_step(
            lambda v: rate_of(v, wk), target_live, x, tol=0.003, max_iter=3, x_min=x_min
        )[0]
    return x
