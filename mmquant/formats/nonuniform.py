"""Scalar codebooks with absmax block scales: NF4 (QLoRA) and a generic codebook helper.

A *scalar codebook* is a sorted array of ``K`` points ``c_0 < … < c_{K−1}`` (in units of the block
scale). Encoding maps ``u`` to the nearest point: the index is the number of midpoint thresholds
``t_i = (c_i + c_{i+1})/2`` with ``t_i ≤ u`` (``searchsorted(t, u, side="right")``, so a value exactly
on a midpoint goes to the **upper** point); decoding is ``c[index]``.

**NF4** (``nf4:group=64,scale_dtype=float16``): the 16 levels of the QLoRA NormalFloat4 data type,
normal quantiles normalised to ``[−1, 1]`` with an exact zero. Definition (Dettmers et al., and
``bitsandbytes.functional.create_normal_map(offset=0.9677083)``)::

    positive: Φ⁻¹(p) for the 8 values p = linspace(δ, 1/2, 9)[:-1] reversed, δ = 0.9677083
    negative: −Φ⁻¹(p) for p = linspace(δ, 1/2, 8)[:-1]
    levels  = sort(positive ∪ {0} ∪ negative) / max

We store the 16 published float32 values (:data:`NF4_LEVELS`, as in bitsandbytes);
:func:`nf4_levels_from_definition` recomputes them (tests: equal within 1e-6). Each block of ``g = 64``
entries along the last axis stores its absmax ``s`` (float16 or float32, rounded; the codes are
computed with the stored ``s``), and ``x̂ = s · NF4[code]``: 4 + 16/64 = 4.25 bits/entry with float16.
Scales at the edges of their dtype follow :mod:`mmquant.formats.limits` (rows too small for float16
scales and input beyond float32 raise ``ValueError``).
Per-row (``group=0``) and per-tensor (``group=-1``) scales and padding of a short last block work as
in :mod:`mmquant.formats.integer`.

References
----------
.. [1] T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer, "QLoRA: Efficient finetuning of
   quantized LLMs", arXiv:2305.14314.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.integer import (
    SCALE_DTYPES,
    _block_absmax,
    as_rows,
    check_scales,
    group_grid,
    group_size,
    group_view,
    kernels,
    round_scale,
    row_shape,
    ungroup,
)
from mmquant.formats.limits import check_float32_range, check_row_precision
from mmquant.layout import Layout, side_array
from mmquant.packing import pack, packed_nbytes, unpack
from mmquant.validation import check_choice, check_int

__all__ = [
    "NF4_LEVELS",
    "nf4_levels_from_definition",
    "codebook_thresholds",
    "codebook_encode",
    "codebook_decode",
    "absmax_codebook_encode",
    "absmax_codebook_decode",
    "NF4",
]

#: The 16 NF4 levels as published (QLoRA / bitsandbytes), float32.
NF4_LEVELS = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
NF4_LEVELS.setflags(write=False)


def nf4_levels_from_definition(offset: float = 0.9677083) -> np.ndarray:
    """The NF4 levels computed from their definition (float64; see the module docstring)."""
    from scipy.stats import norm

    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return v / v.max()


def _check_points(points: ArrayLike) -> np.ndarray:
    p = np.asarray(points, dtype=np.float32).reshape(-1)
    if p.size < 2 or p.size > 256:
        raise ValueError(f"a codebook needs 2..256 points, got {p.size}")
    if not np.all(np.isfinite(p)) or np.any(np.diff(p) <= 0):
        raise ValueError("codebook points must be finite and strictly increasing")
    return p


def codebook_thresholds(points: ArrayLike) -> np.ndarray:
    """Midpoints ``(c_i + c_{i+1})/2`` of a strictly increasing codebook (float32, ``K − 1``)."""
    p = _check_points(points).astype(np.float64)
    return ((p[:-1] + p[1:]) / 2).astype(np.float32)


def codebook_encode(u: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Index (uint8) of the nearest codebook point; a midpoint goes to the upper point.

    Examples
    --------
    >>> codebook_encode(np.array([-2.0, 0.1, 0.5, 0.9]), [-1.0, 0.0, 1.0]).tolist()
    [0, 1, 2, 2]
    """
    t = codebook_thresholds(points)
    return np.searchsorted(t, np.asarray(u), side="right").astype(np.uint8)


def codebook_decode(codes: ArrayLike, points: ArrayLike) -> np.ndarray:
    """``points[codes]`` as float32."""
    return _check_points(points)[np.asarray(codes)]


def absmax_codebook_encode(
    x: np.ndarray,
    points: ArrayLike,
    group: int,
    scale_dtype: str = "float16",
    what: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Absmax-scaled codebook encoding along the last axis.

    Parameters
    ----------
    x : numpy.ndarray
        Finite float32/float64 array.
    points : array_like
        Strictly increasing codebook in units of the block absmax (typically within ``[−1, 1]``).
    group : int
        Block size ``g ≥ 1``, ``0`` per row, ``−1`` per tensor.
    scale_dtype : {"float16", "float32"}
    what : str, optional
        Name of the quantizer in error messages.

    Returns
    -------
    codes : numpy.ndarray
        uint8 indices, flattened in C order (``x.size`` of them).
    scale : numpy.ndarray
        Stored absmax per block, shape ``(rows, blocks)``, in ``scale_dtype``.

    Raises
    ------
    ValueError
        Input beyond the float32 range, a float16 scale beyond 65504, or rows too small for their
        scale dtype (see :mod:`mmquant.formats.limits`).
    """
    thr = codebook_thresholds(points)
    k = kernels()
    x2, g = as_rows(x, group)
    amax = k.block_absmax(x2, g) if k else _block_absmax(x2, g)
    check_float32_range(float(amax.max()), "absmax codebook")
    pts = _check_points(points)
    scale = round_scale(amax, scale_dtype, float(np.abs(pts).max()))

    def rebuild(xr: np.ndarray, s: np.ndarray) -> np.ndarray:
        blocks, n = group_view(xr, g)
        u = blocks / np.where(s > 0, s, 1.0)[..., None]
        vals = pts[np.searchsorted(thr, u, side="right")].astype(np.float64)
        return ungroup(vals * s[..., None], n, xr.shape)

    check_row_precision(
        x2,
        [scale],
        [amax],
        rebuild,
        what="absmax codebook" if what is None else what,
        scale_dtype=scale_dtype,
        hint="use scale_dtype=float32" if scale_dtype == "float16" else "rescale the data",
    )
    s = scale.astype(x2.dtype)
    d = np.where(s > 0, s, 1)
    if k:
        return k.encode_codebook(x2, g, d, thr), scale
    blocks, n = group_view(x2, g)
    u = blocks / d[..., None]
    codes = np.searchsorted(thr.astype(x2.dtype), u.reshape(-1), side="right").astype(np.uint8)
    return ungroup(codes.reshape(blocks.shape), n, x2.shape).reshape(-1), scale


def absmax_codebook_decode(
    codes: np.ndarray, scale: np.ndarray, points: ArrayLike, shape: tuple[int, ...], group: int
) -> np.ndarray:
    """Inverse of :func:`absmax_codebook_encode`: ``s · points[code]`` as float32 of ``shape``."""
    p = _check_points(points)
    rows, n = row_shape(shape, group)
    g = group_size(n, group)
    s = check_scales(scale).astype(np.float32)
    k = kernels()
    if k:
        return k.decode_table(codes, p, s, g, n).reshape(shape)
    blocks, _ = group_view(np.asarray(codes).reshape(rows, n), g)
    vals = p[blocks]
    vals *= s[..., None]
    return ungroup(vals, n, (rows, n)).reshape(shape)


@register("nf4")
@dataclass(frozen=True)
class NF4(Quantizer):
    """QLoRA NormalFloat4: 16 normal-quantile levels times an absmax scale per block.

    Parameters
    ----------
    group : int
        Block size along the last axis (64 in QLoRA), ``0`` per row, ``−1`` per tensor.
    scale_dtype : {"float16", "float32"}
        Dtype of the stored absmax (QLoRA double-quantizes it; we store it plainly).
    """

    group: int = 64
    scale_dtype: str = "float16"

    description = "QLoRA NF4: 16 normal-quantile levels, absmax per 64-block (4.25 bits)"

    def __post_init__(self) -> None:
        check_int(self.group, "group", -1, 1 << 20)
        check_choice(self.scale_dtype, "scale_dtype", SCALE_DTYPES)

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """NF4 with blocks of 64 and float16 scales (4.25 bits/entry)."""
        return [cls()] if rate is None or abs(rate - 4.25) <= 0.5 else []

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """4 bits per entry packed, one absmax ``scale`` in ``scale_dtype`` per group."""
        side = {"scale": side_array(self.scale_dtype, *group_grid(shape, self.group))}
        return Layout(packed_nbytes(math.prod(shape), 4), side)

    def _encode(self, x: np.ndarray) -> Encoded:
        codes, scale = absmax_codebook_encode(
            x, NF4_LEVELS, self.group, self.scale_dtype, self.spec
        )
        k: Any = kernels()
        packed = k.pack(codes, 4) if k else pack(codes, 4)
        return Encoded(codes=packed, side={"scale": scale}, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        k = kernels()
        codes = k.unpack(enc.codes, 4, enc.entries) if k else unpack(enc.codes, 4, enc.entries)
        return absmax_codebook_decode(codes, enc.side["scale"], NF4_LEVELS, enc.shape, self.group)
