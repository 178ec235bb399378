"""Absmax (symmetric) and min/max (affine) integer formats, per tensor, per row or per group.

Spec: ``int:bits=4,group=32,scale_dtype=float16,affine=false``.

``group`` sets the granularity of the scale along the **last axis**:

* ``group = g > 0`` -- one scale per ``g`` consecutive entries of a row. If ``g`` does not divide
  the row length ``n``, the last group of each row is shorter (it is padded by repeating its last
  entry for the computation, which leaves its min, max and absmax unchanged; the padding is **not** stored, so codes cost exactly ``bits`` per real entry and the
  scales ``ceil(n/g)`` per row);
* ``group = 0``  -- one scale per row (per output channel);
* ``group = -1`` -- one scale for the whole tensor.

Symmetric (``affine=false``, the default), ``b`` bits, ``qmax = 2^(b−1) − 1``::

    s = fl(amax / qmax)            (fl = rounding to the stored scale dtype)
    c = clip(rint(x / s), −qmax, qmax)        stored as c + qmax in b bits
    x̂ = s · c

The codes are computed with the **stored** (rounded) scale, so ``decode`` reproduces exactly what
the encoder saw; when rounding made ``s`` slightly smaller than ``amax/qmax`` the largest entry
saturates at ``±qmax`` (an error below one float16 ulp of the scale). Only ``2^b − 1`` of the
``2^b`` codes are used (the symmetric grid has no ``−2^(b−1)``).

Affine (``affine=true``): ``s = fl((max − min)/(2^b − 1))``, offset ``m = fl(min)``,
``c = clip(rint((x − m)/s), 0, 2^b − 1)``, ``x̂ = m + s·c``; the offset is stored in the scale dtype
too (so the rate is ``b + 2·16/g`` bits per entry with float16).

Side information: ``absmax`` (the symmetric scale ``s`` per group) or, affine, ``step`` and
``offset`` (see :mod:`mmquant.formats.scales`). The grouped encode/decode is the block engine's
(:mod:`mmquant.formats.engine`): this module states the parameters.

Measured rate (bits per entry) for ``n`` divisible by ``g``: ``b + 16/g`` (float16 scales), e.g.
INT4 g=32: 4.5 bits/entry.

Edge cases (the rules of :mod:`mmquant.formats.limits`): an all-zero group stores ``s = 0`` and
decodes to zeros. A nonzero scale below the smallest float16 subnormal (5.96e-8) is stored as that
subnormal; a row whose float16 scales are too small to be precise (below 3.8e-6) is accepted only if
its error stays within twice that of exact scales (plus ``2^−7`` of its norm), otherwise
``ValueError`` (use ``scale_dtype=float32``). A scale above the float16 maximum (65504) raises
``ValueError`` (use ``scale_dtype=float32``). Input beyond the float32 range (float64 only) raises
``ValueError``; a float32 scale whose decoded peak ``qmax·s`` would round to ``inf`` is lowered by an
ulp (the largest entry saturates by a few float32 ulps); affine groups whose range ``max − min``
exceeds float32 raise ``ValueError``.

References
----------
.. [1] B. Jacob et al., "Quantization and training of neural networks for efficient
   integer-arithmetic-only inference", arXiv:1712.05877 (affine scheme).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.elements import IntElements
from mmquant.formats.engine import (
    BlockFormat,
    as_rows,
    group_grid,
    group_size,
    group_view,
    kernels,
    row_shape,
    ungroup,
)
from mmquant.formats.scales import SCALE_DTYPES, Absmax, MinMax, check_scales, round_scale
from mmquant.layout import Layout
from mmquant.validation import check_choice, check_int

__all__ = [
    "AbsmaxInt",
    "int_format",
    # the engine's helpers, re-exported for existing callers
    "group_view",
    "ungroup",
    "round_scale",
    "kernels",
    "as_rows",
    "row_shape",
    "group_size",
    "group_grid",
    "check_scales",
    "SCALE_DTYPES",
]


def int_format(
    bits: int, group: int, scale_dtype: str = "float16", affine: bool = False, spec: str = "int"
) -> BlockFormat:
    """The block format of ``int``: symmetric (absmax) or affine (min/max) integers."""
    if affine:
        top = 2**bits - 1
        return BlockFormat(IntElements(bits, 0, top), MinMax(scale_dtype), group, "int", spec)
    qmax = 2 ** (bits - 1) - 1
    return BlockFormat(
        IntElements(bits, -qmax, qmax, add=qmax), Absmax(scale_dtype), group, "int", spec
    )


@register("int")
@dataclass(frozen=True)
class AbsmaxInt(Quantizer):
    """Absmax (or affine) integer quantizer with per-tensor, per-row or per-group scales.

    Parameters
    ----------
    bits : int
        Bits per code, 2..8.
    group : int
        Group size along the last axis (``g ≥ 1``), ``0`` per row, ``-1`` per tensor.
    scale_dtype : {"float16", "float32"}
        Dtype of the stored scales (16 or 32 bits each, counted in the rate).
    affine : bool
        Min/max (asymmetric) grid with an offset per group instead of the symmetric absmax grid.
    """

    bits: int = 4
    group: int = 32
    scale_dtype: str = "float16"
    affine: bool = False

    description = "absmax/affine INT, per tensor/row/group, float16/float32 scales"

    def __post_init__(self) -> None:
        check_int(self.bits, "bits", 2, 8)
        check_int(self.group, "group", -1, 1 << 20)
        check_choice(self.scale_dtype, "scale_dtype", SCALE_DTYPES)
        if not isinstance(self.affine, bool):
            raise TypeError(f"affine must be a bool, got {self.affine!r}")

    @property
    def qmax(self) -> int:
        """Largest code magnitude of the symmetric grid, ``2^(bits−1) − 1``."""
        return 2 ** (self.bits - 1) - 1

    def block_format(self) -> BlockFormat:
        """The engine's description of this configuration."""
        return _format(self)

    def nominal_rate(self, n: int | None = None) -> float:
        """Bits per entry for rows of length ``n`` divisible by the group (per tensor: ``bits``)."""
        per = 2 if self.affine else 1
        sbits = 16 if self.scale_dtype == "float16" else 32
        if self.group > 0:
            return self.bits + per * sbits / self.group
        if self.group == 0 and n:
            return self.bits + per * sbits / n
        return float(self.bits)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """INT4 and INT8, g = 32, float16 scales (4.5 and 8.5 bits/entry)."""
        return [cls(bits=4), cls(bits=8)]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """INT b = 2..8 bits, g = 32, float16 scales (``b + 0.5`` bits/entry)."""
        return [cls(bits=b) for b in range(2, 9)]

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits`` per entry packed (:func:`mmquant.packing.packed_nbytes`), one ``absmax`` (affine:
        one ``step`` and one ``offset``) in ``scale_dtype`` per group: ``(rows, ceil(n/g))``."""
        return self.block_format().layout(shape)

    def _encode(self, x: np.ndarray) -> Encoded:
        codes, side = self.block_format().encode(x)
        return Encoded(codes=codes, side=side, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return self.block_format().decode(enc.codes, enc.side, enc.shape)


@functools.lru_cache(maxsize=256)
def _format(q: AbsmaxInt) -> BlockFormat:
    return int_format(q.bits, q.group, q.scale_dtype, q.affine, q.spec)
