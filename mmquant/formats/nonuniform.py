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
in :mod:`mmquant.formats.integer`. The stored scale is the side array ``absmax``; the grouped
encode/decode is the block engine's (:mod:`mmquant.formats.engine`, a
:class:`~mmquant.formats.elements.CodebookElements` element map).

References
----------
.. [1] T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer, "QLoRA: Efficient finetuning of
   quantized LLMs", arXiv:2305.14314.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.elements import (
    NF4_LEVELS,
    CodebookElements,
    check_points,
    codebook_thresholds,
    nf4_levels_from_definition,
)
from mmquant.formats.engine import BlockFormat
from mmquant.formats.scales import SCALE_DTYPES, Absmax
from mmquant.layout import Layout
from mmquant.validation import check_choice, check_int

__all__ = [
    "NF4_LEVELS",
    "nf4_levels_from_definition",
    "codebook_thresholds",
    "codebook_encode",
    "codebook_decode",
    "absmax_codebook_format",
    "absmax_codebook_encode",
    "absmax_codebook_decode",
    "NF4",
]


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
    return check_points(points)[np.asarray(codes)]


def absmax_codebook_format(
    points: ArrayLike, group: int, scale_dtype: str = "float16", what: str | None = None
) -> BlockFormat:
    """The block format of a codebook in units of the block absmax (stored as ``absmax``)."""
    el = CodebookElements(np.asarray(points))
    name = "absmax codebook"
    return BlockFormat(el, Absmax(scale_dtype), group, name, name if what is None else what)


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
    fmt = absmax_codebook_format(points, group, scale_dtype, what)
    codes, side, _ = fmt.encode_codes(x)
    return codes, side[Absmax.key]


def absmax_codebook_decode(
    codes: np.ndarray, scale: np.ndarray, points: ArrayLike, shape: tuple[int, ...], group: int
) -> np.ndarray:
    """Inverse of :func:`absmax_codebook_encode`: ``s · points[code]`` as float32 of ``shape``."""
    fmt = absmax_codebook_format(points, group)
    return fmt.decode_codes(np.asarray(codes).reshape(-1), {Absmax.key: scale}, shape)


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

    def block_format(self) -> BlockFormat:
        """The engine's description of this configuration."""
        return _format(self)

    def nominal_rate(self, n: int | None = None) -> float:
        """4 bits plus the scale's bits over the group."""
        sbits = 16 if self.scale_dtype == "float16" else 32
        per = self.group if self.group > 0 else (n if self.group == 0 and n else None)
        return 4.0 + (sbits / per if per else 0.0)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """NF4 with blocks of 64 and float16 scales (4.25 bits/entry)."""
        return [cls()]

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """4 bits per entry packed, one ``absmax`` scale in ``scale_dtype`` per group."""
        return self.block_format().layout(shape)

    def _encode(self, x: np.ndarray) -> Encoded:
        codes, side = self.block_format().encode(x)
        return Encoded(codes=codes, side=side, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return self.block_format().decode(enc.codes, enc.side, enc.shape)


@functools.lru_cache(maxsize=256)
def _format(q: NF4) -> BlockFormat:
    return absmax_codebook_format(NF4_LEVELS, q.group, q.scale_dtype, q.spec)
