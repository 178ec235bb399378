"""Rows to unit-RMS blocks of 8 and back: what the lattice codes do before and after the blocks.

Shared by the Voronoi codes (:mod:`mmquant.lattices.voronoi`) and the entropy-coded E8
(:mod:`mmquant.lattices.entropy_coded`). Along the last axis of ``x`` (one row = one column of
the product's ``A``):

1. optional centring (THEORY.md §1): the row mean μ (float16 side information) is subtracted;
   the decoder re-centres its estimate before adding μ back, so that the product of two decoded
   matrices is ``Ā̂ᵀB̄̂ + n·μ_Aμ_Bᵀ`` without cross terms (the means' rounding cancels: the
   encoder subtracts the stored float16 value);
2. a seeded randomized Hadamard rotation (:func:`mmquant.rotations.rotation`, NestQuant
   arXiv 2502.09720), then zero padding to a multiple of 8;
3. row normalisation by its RMS ``s = ‖x‖/√n`` (float16 side information; float32 if float16
   would overflow or underflow, :func:`store_float`), so that the entries are ≈ N(0, 1).

Both directions work a chunk of rows at a time (:data:`mmquant.lattices.chunks.CHUNK_ENTRIES`).
"""

from __future__ import annotations

import math
import types

import numpy as np

from mmquant.kernels import load
from mmquant.lattices import chunks
from mmquant.lattices.inverse import inverse_program, inverse_rows
from mmquant.rotations import rotation

__all__ = ["store_float", "prepare_rows", "finish_rows"]


def store_float(v: np.ndarray) -> np.ndarray:
    """float16 if it represents every value to normal precision, else float32."""
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
        f = v.astype(np.float32)
    if not np.all(np.isfinite(f)):
        raise ValueError(
            "a row norm or mean exceeds the float32 range (3.4e38) of the stored side information"
        )
    finite = np.all(np.isfinite(h))
    tiny = np.any((v != 0) & (np.abs(v) < 6.2e-5))
    return h if finite and not tiny else f


def _row_steps(n_rows: int, row_length: int) -> range:
    """First rows of the chunks of about :data:`CHUNK_ENTRIES` entries (at least one row each)."""
    return range(0, n_rows, max(1, chunks.CHUNK_ENTRIES // max(row_length, 1)))


def prepare_rows(
    x: np.ndarray, *, rotate: bool, center: bool, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Steps 1–3 of the module docstring: (N, 8) unit-RMS blocks and the side information.

    Rows are the last axis of ``x``; side information: ``mean`` (if ``center``) and ``norm``.
    The rows are converted, centred and rotated a chunk at a time (every step is per row, so
    the result does not depend on the chunks) straight into the float64 output: the peak is
    the output (8 bytes per entry, zero-padded to a multiple of 8) plus one chunk.
    """
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    n_rows = x2.shape[0]
    n8 = -(-n // 8) * 8
    steps = _row_steps(n_rows, n8)
    side: dict[str, np.ndarray] = {}
    mean64 = None
    if center:
        mu = np.empty(n_rows)
        for r0 in steps:
            mu[r0 : r0 + steps.step] = x2[r0 : r0 + steps.step].astype(np.float64).mean(axis=1)
        mean = store_float(mu)
        side["mean"] = mean
        mean64 = mean.astype(np.float64)
    rot = rotation(n, seed) if rotate else None
    out = np.zeros((n_rows, n8)) if n8 != n else np.empty((n_rows, n))
    ss = np.empty(n_rows)
    for r0 in steps:
        r1 = min(n_rows, r0 + steps.step)
        rows = x2[r0:r1].astype(np.float64)
        if mean64 is not None:
            rows -= mean64[r0:r1, None]
        if rot is not None:
            rows = rot.apply(rows)
        out[r0:r1, :n] = rows
        rows = out[r0:r1]
        ss[r0:r1] = np.sum(rows * rows, axis=1)
    rms = np.sqrt(ss / n)
    norm = store_float(rms)  # an all-zero row stores norm 0 and decodes to zeros
    side["norm"] = norm
    scale = norm.astype(np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    for r0 in steps:
        out[r0 : r0 + steps.step] /= scale[r0 : r0 + steps.step, None]
    return out.reshape(-1, 8), side


def finish_rows(
    zh: np.ndarray,
    side: dict[str, np.ndarray] | types.MappingProxyType,
    shape: tuple[int, ...],
    *,
    rotate: bool,
    center: bool,
    seed: int,
) -> np.ndarray:
    """Inverse of :func:`prepare_rows` applied to the reconstructed blocks ``zh``.

    A chunk of rows at a time (every step is per row) into the float64 output: the peak is
    ``zh`` and the output plus one chunk.
    """
    n = shape[-1]
    n_rows = math.prod(shape[:-1])
    n8 = -(-n // 8) * 8
    norm = side["norm"]
    if norm.size and not (np.all(np.isfinite(norm)) and float(np.min(norm)) >= 0):
        raise ValueError("corrupt side information: 'norm' holds a negative or non-finite RMS")
    zr = zh.reshape(n_rows, n8)
    norm = side["norm"].astype(np.float64)
    mean = side["mean"].astype(np.float64) if center else None
    prog = inverse_program(n, seed) if rotate else None
    kern = load("rotation") if rotate else None
    out = np.empty((n_rows, n))
    for r0 in _row_steps(n_rows, n8):
        r1 = min(n_rows, r0 + max(1, chunks.CHUNK_ENTRIES // n8))
        rows = (zr[r0:r1] * norm[r0:r1, None])[:, :n]
        if prog is not None:  # the rotation's inverse, as rotation(n, seed).inverse (same bits)
            rows = np.ascontiguousarray(rows)
            rows = inverse_rows(rows, prog) if kern is None else kern.inverse_rows(rows, prog)
        if mean is not None:  # re-centre: then ÂᵀB̂ = Ā̂ᵀB̄̂ + n·μ_Aμ_Bᵀ exactly (no cross terms)
            rows = rows - rows.mean(axis=1, keepdims=True) + mean[r0:r1, None]
        out[r0:r1] = rows
    return out.reshape(shape)
