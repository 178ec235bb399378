"""Round to nearest (RTN): every weight quantized on its own, no error feedback.

The same grids as GPTQ (:mod:`~mmquant.weightonly.grids`): a uniform step Δ with per-column
entropy coding (Δ searched for a target rate), or absmax INT per row/group at a fixed width.
Σ_X is used only to measure the WMSE (and to find dead inputs, whose weights are dropped).
"""

from __future__ import annotations

import numpy as np

from mmquant.validation import check_choice
from mmquant.weightonly.gptq import quantize_on_grid
from mmquant.weightonly.grids import GRIDS
from mmquant.weightonly.result import WeightQuant
from mmquant.weightonly.sic import setup

__all__ = ["rtn"]


def rtn(
    w: object,
    sigma: object | None = None,
    rate: float | None = None,
    *,
    grid: str = "uniform",
    step: float | None = None,
    bits: int = 4,
    group: int | None = None,
    rotate: bool = False,
    seed: int = 0,
    dead: float = 1e-3,
) -> WeightQuant:
    """Round-to-nearest quantization of ``W`` (``a×n``) along its inputs.

    Parameters
    ----------
    w : array_like
        ``(a, n)`` weights.
    sigma : array_like, optional
        ``(n, n)`` input covariance, used for the WMSE and dead inputs (default identity).
    rate, grid, step, bits, group, rotate, seed, dead
        As in :func:`~mmquant.weightonly.gptq.gptq`.

    Returns
    -------
    WeightQuant
        ``method = "rtn"`` (``"rtn+rot"``).
    """
    check_choice(grid, "grid", GRIDS)
    arr = np.asarray(w)
    if sigma is None:
        if arr.ndim != 2:
            raise ValueError(f"W must be 2-D, got shape {arr.shape}")
        sigma = np.eye(arr.shape[1])
    p = setup(w, sigma, damp=1e-4, dead=dead, rotate=rotate, seed=seed)
    return quantize_on_grid(
        p, "rtn", rate, grid=grid, step=step, bits=bits, group=group, feedback=False
    )
