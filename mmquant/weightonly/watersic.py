"""WaterSIC: one Y-domain step for every column, entropy-coded integers, LMMSE shrink, rescalers.

Algorithm (WaterSIC arXiv 2603.04956, analysed in arXiv 2601.17187; THEORY.md §8):

1. drop dead inputs; damp ``H = Σ_X + δI`` and factor ``H = LLᵀ``; ``Y = W·L``;
2. pick the Y-domain step ``c`` so that the measured rate (bitstream + side information) hits
   ``R``; start ``c₀ = √(2πe)·GM_j(√s_j·L_jj)·2^{−R_code}`` (``s_j = mean_r W_rj²``), refine by
   secant/bisection on a subsample of rows, then once on all rows;
3. for ``j = n−1 … 0``: ``z = round(Y_j/c)``; ``γ_j = ⟨z, Y_j⟩/(c‖z‖²)`` (0 if ``z ≡ 0``);
   ``ŵ_j = γ_j·(c/L_jj)·z`` (W-domain step ``c/L_jj``); ``Y[:, :j] −= ŵ_j ⊗ L[j, :j]``;
4. optional diagonal rescalers Γ (columns, merged into the column scales: free) and T (rows, one
   float16 per row), see :mod:`~mmquant.weightonly.rescale`;
5. store ``Z`` entropy coded per column (:mod:`~mmquant.weightonly.coding`) and one float16 per
   column (``Γ_j·γ_j·c/L_jj``, relative to one float32 unit).

At high rate the WMSE is ``(2πe/12)·σ²·2^{−2R}·det(Σ_X)^{1/n}`` whatever the basis, 0.2546 bit
above the waterfilling limit.
"""

from __future__ import annotations

import math

import numpy as np

from mmquant.validation import check_choice, check_float
from mmquant.weightonly.covariance import wmse
from mmquant.weightonly.rescale import fit_rescalers
from mmquant.weightonly.result import WeightQuant, build_result
from mmquant.weightonly.sic import Problem, search_rate, setup, sic

__all__ = ["watersic", "side_bits"]

_SQRT_2PIE = math.sqrt(2.0 * math.pi * math.e)


def side_bits(a: int, n: int, *, row_scale_groups: int = 0, col_scale: bool, entropy: bool) -> int:
    """Bits of side information of a stored matrix (see :mod:`~mmquant.weightonly.result`)."""
    bits = 32  # float32 unit
    if col_scale:
        bits += 16 * n
    bits += 16 * a * row_scale_groups
    if entropy:
        bits += 8 * n + 64 + 32  # model index per column, bounds, rANS flush word
    return bits


def _run(
    wk: np.ndarray,
    chol: np.ndarray,
    c: float,
    unit: float,
    lmmse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One SIC pass at Y-domain step ``c``: codes, reconstruction, float16 column scales, γ."""
    m = wk.shape[1]
    d = np.diag(chol)
    col16 = np.zeros(m, np.float16)
    gam = np.zeros(m)

    def quantize(j: int, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.rint(y / c)
        zz = float(z @ z)
        if zz == 0.0:
            gam[j] = 0.0
            return z.astype(np.int64), np.zeros_like(y)
        g = float(z @ y) / (c * zz) if lmmse else 1.0
        gam[j] = g
        col16[j] = np.float16(g * c / d[j] / unit)
        return z.astype(np.int64), (unit * float(col16[j])) * z

    z, w_hat = sic(wk @ chol, chol, quantize)
    return z, w_hat, col16, gam


def watersic(
    w: object,
    sigma: object,
    rate: float | None = None,
    *,
    step: float | None = None,
    lmmse: bool = True,
    rescale: str = "columns",
    rotate: bool = False,
    seed: int = 0,
    damp: float = 1e-4,
    dead: float = 1e-3,
) -> WeightQuant:
    """Quantize ``W`` (``a×n``) for inputs of covariance Σ_X with WaterSIC.

    Parameters
    ----------
    w : array_like
        ``(a, n)`` weights (a layer ``y = Wx``; quantized along ``n``, the input dimension).
    sigma : array_like
        ``(n, n)`` input covariance ``Σ_X = E[xxᵀ]`` (symmetric PSD).
    rate : float, optional
        Target measured rate in bits per weight, side information included. Give ``rate`` or
        ``step``.
    step : float, optional
        Y-domain step ``c`` (no rate search).
    lmmse : bool
        Per-column LMMSE shrink γ_j.
    rescale : {"none", "columns", "both"}
        Fit Γ (free) and, with ``"both"``, T (16 bits per row); kept only if they lower the WMSE.
    rotate : bool
        Quantize in a randomly rotated basis (randomized Hadamard when ``n`` allows; seeded).
    seed : int
        Rotation seed.
    damp, dead : float
        Relative damping and dead-input threshold (:func:`~.covariance.prepare_covariance`).

    Returns
    -------
    WeightQuant
        ``method = "watersic"`` (``"watersic+rot"``); ``y_step = c``, ``steps = c/L_jj``.

    References
    ----------
    WaterSIC arXiv:2603.04956; arXiv:2601.17187.
    """
    check_choice(rescale, "rescale", ("none", "columns", "both"))
    p = setup(w, sigma, damp=damp, dead=dead, rotate=rotate, seed=seed)
    return _watersic(p, rate, step=step, lmmse=lmmse, rescale=rescale)


def _watersic(
    p: Problem, rate: float | None, *, step: float | None, lmmse: bool, rescale: str
) -> WeightQuant:
    a, n = p.w.shape
    wk, chol = p.wk, p.chol
    d = np.diag(chol)
    info: dict[str, float] = {}
    cache: dict[float, tuple] = {}
    rows_groups = 1 if rescale == "both" else 0
    side = side_bits(a, n, row_scale_groups=rows_groups, col_scale=True, entropy=True)
    if (rate is None) == (step is None):
        raise ValueError("give exactly one of rate and step")
    if step is not None:
        c = check_float(step, "step", 0.0, lo_open=True)
    elif not np.any(wk):  # nothing to code: any step gives zero codes
        c, step = 1.0, 1.0
    else:
        s = np.maximum(np.mean(wk**2, axis=0), 1e-30)
        offset = math.log2(_SQRT_2PIE) + float(np.mean(np.log2(np.sqrt(s) * d)))

        def codes_at(cc: float, ww: np.ndarray) -> np.ndarray:
            out = _run(ww, chol, cc, _unit(cc, d), lmmse)
            if ww is wk:  # keep the last full-row pass only (memory)
                cache.clear()
                cache[cc] = out
            return out[0]

        x_min = math.log2(float(np.abs(wk @ chol).max())) - 26.0
        x = search_rate(codes_at, wk, n, rate, side, offset, x_min, info)
        c = 2.0**x
    unit = _unit(c, d)
    if step is None and c in cache:
        z, w_hat, col16, gam = cache.pop(c)
    else:
        z, w_hat, col16, gam = _run(wk, chol, c, unit, lmmse)
    row16 = None
    t = g = None
    if rescale != "none":
        base = wmse(wk, w_hat, p.sk)
        t, g = fit_rescalers(wk, w_hat, p.sk, rows=rescale == "both", cols=True)
        col_new = np.asarray(col16, np.float64) * g
        new16 = col_new.astype(np.float16)
        rows16 = t.astype(np.float16) if rescale == "both" else None
        cand = unit * z * new16.astype(np.float64)[None, :]
        if rows16 is not None:
            cand = cand * rows16.astype(np.float64)[:, None]
        if np.all(np.isfinite(new16)) and wmse(wk, cand, p.sk) < base:
            col16 = new16
            row16 = None if rows16 is None else rows16[:, None]
        else:
            t = g = None
        del cand
    del w_hat
    cache.clear()
    col_full = np.zeros(n, np.float16)
    col_full[p.live] = col16
    steps = np.zeros(n)
    steps[p.live] = c / d
    gam_full = np.zeros(n)
    gam_full[p.live] = gam
    return build_result(
        method="watersic+rot" if p.rotation_seed is not None else "watersic",
        z=p.scatter(z),
        unit=unit,
        col_scale=col_full,
        row_scale=row16,
        group=n,
        live=p.live,
        rotation_seed=p.rotation_seed,
        fixed_bits=None,
        sigma=p.sigma,
        w=p.w,
        steps=steps,
        y_step=c,
        gamma=gam_full,
        row_rescale=t if row16 is not None else None,
        col_rescale=g,
        damping=p.damping,
        info=info,
    )


def _unit(c: float, d: np.ndarray) -> float:
    """Power of two near the median W-domain step (float16 column scales are relative to it)."""
    return float(2.0 ** round(math.log2(c / float(np.median(d)))))
