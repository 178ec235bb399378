"""Minifloat element formats ExMy (E2M1, E2M3, E3M2, E4M3, E5M2) and the scaled FP quantizer.

Each format is data: one :class:`FloatFormat` row of :data:`FORMATS` (exponent and mantissa bits,
bias, largest and smallest normal, the matching ``ml_dtypes`` dtype), defined with the rounding in
:mod:`mmquant.formats.elements` and re-exported here. Values of a format with
``e`` exponent bits, ``m`` mantissa bits and bias ``B`` (``emin = 1 − B``)::

    code = sign·2^(e+m) + E·2^m + M
    value = (−1)^sign · 2^(E−B) · (1 + M/2^m)      (E ≥ 1, normal)
          = (−1)^sign · 2^emin · M/2^m               (E = 0, subnormal)

Conversion (:func:`encode_elements`) rounds to nearest, **ties to even**, and **saturates**: every
value beyond the largest finite magnitude is coded as ±max (``ml_dtypes`` turns FP8 overflow into
NaN/Inf; we never emit NaN/Inf codes). The rounding is our own, vectorised: with
``E_x = ⌊log2|x|⌋`` read from the float's exponent bits and the quantum ``q = 2^(max(E_x, emin) − m)``
(a power of two, so ``|x|/q`` is exact), ``t = rint(|x|/q)`` (ties to even) and the code magnitude
is ``(max(E_x, emin) − emin)·2^m + t``: a carry ``t = 2^(m+1)`` moves to the next exponent by
itself, and in the subnormal range the code is ``t``. The result is bit-exact with ``ml_dtypes``
for every value within the range (tests: every code, every midpoint, random values).

The constants of every format (OCP 8-bit floating point v1.0, OCP MX v1.0) are tabulated in
:mod:`mmquant.formats.elements`.

The scaled quantizer ``fp:fmt=e4m3,group=32,scale_dtype=float16`` stores, per group of ``g``
entries along the last axis (``group=0`` per row, ``-1`` per tensor, as in ``int``), the scale
``s = fl(amax / max)`` (side key ``absmax``) and the elements ``encode(x / s)``; decode is
``s · value(code)`` (the block engine, :mod:`mmquant.formats.engine`).
Rate: ``1 + e + m`` bits per entry plus ``16/g`` (float16) or ``32/g`` (float32). Scales at the
edges of their dtype follow :mod:`mmquant.formats.limits` (rows too small for float16 scales and
input beyond float32 raise ``ValueError``; float32 scales keep ``s·max`` finite).

References
----------
.. [1] OCP 8-bit Floating Point Specification (OFP8), rev. 1.0, 2023.
.. [2] OCP Microscaling Formats (MX) Specification v1.0, 2023.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.elements import (
    FORMATS,
    FloatElements,
    FloatFormat,
    decode_elements,
    encode_elements,
    get_format,
    round_to_format,
    value_table,
)
from mmquant.formats.engine import BlockFormat
from mmquant.formats.scales import SCALE_DTYPES, Absmax
from mmquant.layout import Layout
from mmquant.validation import check_choice, check_int

__all__ = [
    "FloatFormat",
    "FORMATS",
    "get_format",
    "encode_elements",
    "decode_elements",
    "round_to_format",
    "value_table",
    "ScaledFloat",
]


@register("fp")
@dataclass(frozen=True)
class ScaledFloat(Quantizer):
    """Minifloat elements with an absmax scale per tensor, row or group (``fp:fmt=e2m1,group=32``).

    Parameters
    ----------
    fmt : {"e2m1", "e2m3", "e3m2", "e4m3", "e5m2"}
        Element format (see :data:`FORMATS`).
    group : int
        Group size along the last axis (``g ≥ 1``), ``0`` per row, ``-1`` per tensor.
    scale_dtype : {"float16", "float32"}
        Dtype of the stored scales ``s = fl(amax/max)``.
    """

    fmt: str = "e4m3"
    group: int = 32
    scale_dtype: str = "float16"

    description = "minifloat ExMy elements with an absmax float16/float32 scale per group"

    def __post_init__(self) -> None:
        check_choice(self.fmt, "fmt", tuple(FORMATS))
        check_int(self.group, "group", -1, 1 << 20)
        check_choice(self.scale_dtype, "scale_dtype", SCALE_DTYPES)

    @property
    def format(self) -> FloatFormat:
        """The element format."""
        return FORMATS[self.fmt]

    def block_format(self) -> BlockFormat:
        """The engine's description of this configuration."""
        return _format(self)

    def nominal_rate(self, n: int | None = None) -> float:
        """``1 + e + m`` element bits plus the scale's bits over the group (per row: over ``n``)."""
        sbits = 16 if self.scale_dtype == "float16" else 32
        per = self.group if self.group > 0 else (n if self.group == 0 and n else None)
        return self.format.bits + (sbits / per if per else 0.0)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """E2M1 (4.5 bits/entry), E2M3 (6.5), E4M3 (8.5), g = 32, float16 scales."""
        return [cls(fmt="e2m1"), cls(fmt="e2m3"), cls(fmt="e4m3")]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """The defaults and E3M2 (6.5 bits/entry)."""
        return [*cls.defaults(), cls(fmt="e3m2")]

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``1 + e + m`` bits per entry packed, one ``absmax`` scale in ``scale_dtype`` per group."""
        return self.block_format().layout(shape)

    def _encode(self, x: np.ndarray) -> Encoded:
        codes, side = self.block_format().encode(x)
        return Encoded(codes=codes, side=side, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return self.block_format().decode(enc.codes, enc.side, enc.shape)


@functools.lru_cache(maxsize=256)
def _format(q: ScaledFloat) -> BlockFormat:
    return BlockFormat(FloatElements(q.format), Absmax(q.scale_dtype), q.group, "fp", q.spec)
