"""GPTQ / LDLQ: successive interference cancellation with one W-domain grid for every column.

In the ``Y = W·L`` basis (:mod:`~mmquant.weightonly.sic`), column ``j``'s residual target is
quantized as ``ŵ_j = Q(Y_j/L_jj)`` on a W-domain grid (a uniform step Δ, i.e. a Y-domain step
``Δ·L_jj``, or absmax INT per row/group), then its error is fed back to the earlier columns. This is
GPTQ (Frantar et al. 2022) / LDLQ (QuIP) with the column order reversed (last to first) and the
lower Cholesky factor of Σ_X instead of the upper factor of Σ_X⁻¹, which is the same algorithm.

At high rate with entropy coding, GPTQ's WMSE exceeds WaterSIC's by the factor AM/GM of
``d_j = L_jj²``, i.e. a gap of ``½·log2(AM/GM)`` bits, which a random rotation shrinks
(arXiv 2601.17187).

**On a block format** (:func:`gptq_on_format`, ``gptq:base=nvfp4``, ``base=mxfp4``, ``base=nf4``,
``base=int:bits=3;group=64`` ...): the format's scales are computed once from the original weights
by the format's own rule (*static groups*, as llm-compressor does for NVFP4), then every column's
target is rounded onto the format's element grid with those scales (``c = Q_elem((t − m)/s)``,
``ŵ = fl32(s·value(c)) + m``) and its error fed back. The codes are packed at the element width
beside the scales: the bytes are exactly a record of the base format, decoded by its decoder, at
exactly its rate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mmquant.packing import pack
from mmquant.validation import check_choice
from mmquant.weightonly.grids import GRIDS, make_grid
from mmquant.weightonly.result import WeightQuant, build_result
from mmquant.weightonly.sic import Problem, search_rate, setup, sic
from mmquant.weightonly.watersic import side_bits

if TYPE_CHECKING:  # pragma: no cover
    from mmquant.formats.engine import BlockFormat

__all__ = ["gptq", "gptq_on_format", "quantize_on_grid"]

_SQRT_2PIE = math.sqrt(2.0 * math.pi * math.e)


def gptq(
    w: object,
    sigma: object,
    rate: float | None = None,
    *,
    grid: str = "uniform",
    step: float | None = None,
    bits: int = 4,
    group: int | None = None,
    rotate: bool = False,
    seed: int = 0,
    damp: float = 1e-4,
    dead: float = 1e-3,
) -> WeightQuant:
    """Quantize ``W`` (``a×n``) for inputs of covariance Σ_X with GPTQ/LDLQ.

    Parameters
    ----------
    w : array_like
        ``(a, n)`` weights.
    sigma : array_like
        ``(n, n)`` input covariance Σ_X.
    rate : float, optional
        ``grid="uniform"``: target measured rate in bits/weight (side information included);
        the step Δ is searched. Not used by ``grid="int"`` (its rate is ``bits + 16/group``).
    grid : {"uniform", "int"}
        See :mod:`~mmquant.weightonly.grids`.
    step : float, optional
        Uniform step Δ (instead of ``rate``).
    bits, group : int
        Absmax INT width and group size (``group=None``: one scale per row).
    rotate, seed : bool, int
        Random rotation of the input basis (randomized Hadamard when possible).
    damp, dead : float
        Relative damping and dead-input threshold.

    Returns
    -------
    WeightQuant
        ``method = "gptq"`` (``"gptq+rot"``).
    """
    check_choice(grid, "grid", GRIDS)
    p = setup(w, sigma, damp=damp, dead=dead, rotate=rotate, seed=seed)
    return quantize_on_grid(
        p, "gptq", rate, grid=grid, step=step, bits=bits, group=group, feedback=True
    )


def _codes(p: Problem, wk: np.ndarray, gr, feedback: bool) -> tuple[np.ndarray, np.ndarray]:
    if not feedback:
        zs, ws = zip(*(gr.quantize(j, wk[:, j]) for j in range(wk.shape[1])))
        return np.stack(zs, axis=1), np.stack(ws, axis=1)
    d = np.diag(p.chol)
    return sic(wk @ p.chol, p.chol, lambda j, y: gr.quantize(j, y / d[j]))


def quantize_on_grid(
    p: Problem,
    method: str,
    rate: float | None,
    *,
    grid: str,
    step: float | None,
    bits: int,
    group: int | None,
    feedback: bool,
) -> WeightQuant:
    """Quantize a prepared problem on a grid, with (GPTQ) or without (RTN) error feedback."""
    a, n = p.w.shape
    wk = p.wk
    info: dict[str, float] = {}
    if grid == "uniform":
        if (rate is None) == (step is None):
            raise ValueError("the uniform grid needs exactly one of rate and step")
        if step is None and not np.any(wk):  # nothing to code
            step = 1.0
        if step is None:
            side = side_bits(a, n, col_scale=False, entropy=True)
            s = np.maximum(np.mean(wk**2, axis=0), 1e-30)
            offset = math.log2(_SQRT_2PIE) + 0.5 * float(np.mean(np.log2(s)))

            def codes_at(st: float, ww: np.ndarray) -> np.ndarray:
                return _codes(p, ww, make_grid("uniform", ww, step=st), feedback)[0]

            x_min = math.log2(float(np.abs(wk).max())) - 24.0
            x = search_rate(codes_at, wk, n, rate, side, offset, x_min, info)
            step = 2.0**x
        gr = make_grid("uniform", wk, step=step)
    else:
        gr = make_grid("int", wk, bits=bits, group=group)
    z, _ = _codes(p, wk, gr, feedback)
    steps = np.zeros(n)
    steps[p.live] = gr.unit if gr.kind == "uniform" else np.nan
    rot = p.rotation_seed is not None
    return build_result(
        method=method + ("+rot" if rot else ""),
        z=p.scatter(z),
        unit=gr.unit,
        col_scale=None,
        row_scale=gr.row_scale,
        group=gr.group,
        live=p.live,
        rotation_seed=p.rotation_seed,
        fixed_bits=gr.bits,
        sigma=p.sigma,
        w=p.w,
        steps=steps,
        damping=p.damping,
        info=info,
    )


def gptq_on_format(
    w: object,
    sigma: object,
    fmt: BlockFormat,
    *,
    damp: float = 1e-4,
    dead: float = 1e-3,
) -> WeightQuant:
    """GPTQ/LDLQ on a block format with static groups (see the module docstring).

    Parameters
    ----------
    w : array_like
        ``(a, n)`` weights (float32 or float64; the scales are computed from them as given, so
        they are exactly the base format's scales of ``w``).
    sigma : array_like
        ``(n, n)`` input covariance Σ_X.
    fmt : mmquant.formats.engine.BlockFormat
        The base format (``quantizer.block_format()`` of a registered format).
    damp, dead : float
        Relative damping and dead-input threshold. Dead inputs carry no weight in the WMSE: they
        are rounded to the nearest code (no feedback).

    Returns
    -------
    WeightQuant
        ``method = "gptq"``, ``coding = "format:<spec>"``: ``stream`` and ``side`` are a record of
        the base format (packed element codes, its scale arrays); ``codes`` are the element codes.
    """
    from mmquant.entropy import empirical_entropy
    from mmquant.weightonly.covariance import wmse

    p = setup(w, sigma, damp=damp, dead=dead)
    x = np.asarray(w)
    if x.dtype not in (np.float32, np.float64):
        x = p.w
    static = fmt.static(x)  # the base format's scales of w: static groups
    a, n = p.w.shape
    codes = np.zeros((a, n), np.uint8)
    for j in np.flatnonzero(~p.live):
        codes[:, j] = static.quantize(int(j), p.w[:, j])[0]
    cols = np.flatnonzero(p.live)
    d = np.diag(p.chol)
    z, _ = sic(p.wk @ p.chol, p.chol, lambda j, y: static.quantize(int(cols[j]), y / d[j]))
    codes[:, p.live] = z
    stream = pack(codes.reshape(-1), fmt.bits)
    side = dict(static.side)
    w_hat = fmt.decode(stream, side, (a, n)).astype(np.float64)
    side_bytes = sum(v.nbytes for v in side.values())
    z64 = codes.astype(np.int64)
    zl = z64[:, p.live]
    return WeightQuant(
        method="gptq",
        w_hat=w_hat,
        codes=z64,
        steps=np.full(n, np.nan),
        y_step=float("nan"),
        gamma=np.ones(n),
        row_rescale=None,
        col_rescale=None,
        side=side,
        stream=stream,
        coding=f"format:{fmt.spec}",
        bits_per_weight=8.0 * (stream.nbytes + side_bytes) / (a * n),
        side_bits_per_weight=8.0 * side_bytes / (a * n),
        entropy=empirical_entropy(zl, axis=-1) * zl.size / (a * n),
        entropy_pooled=empirical_entropy(z64),
        wmse=wmse(p.w, w_hat, p.sigma),
        damping=p.damping,
        live=p.live,
        rotation_seed=None,
        group=fmt.group,
    )
