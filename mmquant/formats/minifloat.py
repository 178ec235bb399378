"""Minifloat element formats ExMy (E2M1, E2M3, E3M2, E4M3, E5M2): rounding, codes, and a scaled FP quantizer.

Each format is data: one :class:`FloatFormat` row of :data:`FORMATS` (exponent and mantissa bits,
bias, largest and smallest normal, the matching ``ml_dtypes`` dtype). Values of a format with
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

Constants (OCP 8-bit floating point v1.0 and OCP MX v1.0):

====== === === ==== ========= ========== =================
format  e   m  bias max        min normal ml_dtypes
====== === === ==== ========= ========== =================
e2m1    2   1   1   6.0        1.0        float4_e2m1fn
e2m3    2   3   1   7.5        1.0        float6_e2m3fn
e3m2    3   2   3   28.0       0.25       float6_e3m2fn
e4m3    4   3   7   448.0      2^-6       float8_e4m3fn
e5m2    5   2   15  57344.0    2^-14      float8_e5m2
====== === === ==== ========= ========== =================

The scaled quantizer ``fp:fmt=e4m3,group=32,scale_dtype=float16`` stores, per group of ``g``
entries along the last axis (``group=0`` per row, ``-1`` per tensor, as in ``int``), the scale
``s = fl(amax / max)`` and the elements ``encode(x / s)``; decode is ``s · value(code)``.
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
import math
from dataclasses import dataclass

import numpy as np

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
    "FloatFormat",
    "FORMATS",
    "get_format",
    "encode_elements",
    "decode_elements",
    "round_to_format",
    "value_table",
    "ScaledFloat",
    "decode_grouped",
]


@dataclass(frozen=True)
class FloatFormat:
    """A sign–exponent–mantissa element format without Inf (saturating) and its constants.

    Attributes
    ----------
    name : str
        Short name (``"e4m3"``).
    ebits, mbits : int
        Exponent and mantissa bits (one sign bit on top).
    bias : int
        Exponent bias ``B``; ``emin = 1 − B``.
    max_normal : float
        Largest finite magnitude.
    min_normal : float
        Smallest normal magnitude ``2^emin``.
    ml_dtype : str
        Name of the matching ``ml_dtypes`` dtype (test oracle).
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    max_normal: float
    min_normal: float
    ml_dtype: str

    @property
    def bits(self) -> int:
        """Bits per element, ``1 + e + m``."""
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal, ``1 − bias``."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest normal, ``⌊log2 max_normal⌋`` (OCP MX ``emax_elem``)."""
        return int(np.floor(np.log2(self.max_normal)))

    @property
    def max_code(self) -> int:
        """Code (without sign) of the largest finite magnitude."""
        return _max_code(self)


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("e2m1", 2, 1, 1, 6.0, 1.0, "float4_e2m1fn"),
        FloatFormat("e2m3", 2, 3, 1, 7.5, 1.0, "float6_e2m3fn"),
        FloatFormat("e3m2", 3, 2, 3, 28.0, 0.25, "float6_e3m2fn"),
        FloatFormat("e4m3", 4, 3, 7, 448.0, 2.0**-6, "float8_e4m3fn"),  # OCP "fn": no Inf
        FloatFormat("e5m2", 5, 2, 15, 57344.0, 2.0**-14, "float8_e5m2"),  # IEEE-like
    )
}


def get_format(name: str | FloatFormat) -> FloatFormat:
    """The :class:`FloatFormat` called ``name`` (one of :data:`FORMATS`)."""
    if isinstance(name, FloatFormat):
        return name
    check_choice(name, "fmt", tuple(FORMATS))
    return FORMATS[name]


_BITS = {  # float dtype -> (unsigned int view, mantissa bits, exponent bias)
    np.dtype(np.float32): (np.uint32, 23, 127),
    np.dtype(np.float64): (np.uint64, 52, 1023),
}


def encode_elements(x: np.ndarray, fmt: str | FloatFormat) -> np.ndarray:
    """Codes of ``x`` in the format: round to nearest, ties to even, saturate to ±max.

    Parameters
    ----------
    x : numpy.ndarray
        Finite float32 or float64 values (other dtypes are converted to float64).
    fmt : str or FloatFormat

    Returns
    -------
    numpy.ndarray
        ``uint8`` codes, same shape (the bit patterns of the ``ml_dtypes`` dtype).
    """
    f = get_format(fmt)
    x = np.asarray(x)
    if x.dtype not in _BITS:
        x = x.astype(np.float64)
    if x.size <= _CHUNK:
        return _encode_flat(x, f)
    out = np.empty(x.shape, np.uint8)  # elementwise: a chunk at a time, small temporaries
    flat, dest = x.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        dest[i : i + _CHUNK] = _encode_flat(flat[i : i + _CHUNK], f)
    return out


_CHUNK = 1 << 16  # entries per step of encode_elements


def _encode_flat(x: np.ndarray, f: FloatFormat) -> np.ndarray:
    """:func:`encode_elements` of a float32/float64 array in one step."""
    uint, mant, fbias = _BITS[x.dtype]
    u = x.view(uint)
    sign_shift = uint(8 * x.dtype.itemsize - 1)
    ebits = (u >> uint(mant)) & uint(2 * fbias + 1)  # biased exponent of x (0 for 0, subnormals)
    # e = max(⌊log2|x|⌋, emin) − emin ≥ 0, as biased exponents: max(ebits, fbias + emin)
    e = np.maximum(ebits, uint(fbias + f.emin))
    # 1/q = 2^(m − e_unbiased): build its bits directly (always a normal float)
    inv_q = ((uint(2 * fbias + f.mbits) - e) << uint(mant)).view(x.dtype)
    t = np.abs(x)
    t *= inv_q
    np.rint(t, out=t)
    code = t.astype(np.int32)
    code += ((e - uint(fbias + f.emin)).astype(np.int32)) << f.mbits
    np.minimum(code, _max_code(f), out=code)
    code |= ((u >> sign_shift).astype(np.int32)) << (f.ebits + f.mbits)
    return code.astype(np.uint8)


@functools.cache
def _max_code(f: FloatFormat) -> int:
    e = int(np.floor(np.log2(f.max_normal)))
    t = int(f.max_normal / 2.0 ** (e - f.mbits))
    return ((e - f.emin) << f.mbits) + t


@functools.cache
def value_table(fmt: str | FloatFormat) -> np.ndarray:
    """Value of every code ``0 .. 2^bits − 1`` as float32 (NaN for codes beyond ±max).

    Built from the definition (not from ``ml_dtypes``); read-only.
    """
    f = get_format(fmt)
    c = np.arange(2**f.bits)
    mag = c & ((1 << (f.ebits + f.mbits)) - 1)
    e = mag >> f.mbits
    m = mag & ((1 << f.mbits) - 1)
    v = np.where(
        e == 0,
        m * 2.0 ** (f.emin - f.mbits),
        (1 + m / 2.0**f.mbits) * np.exp2(e.astype(np.float64) - f.bias),
    )
    v = np.where(v > f.max_normal, np.nan, v)
    v = np.where(c >> (f.ebits + f.mbits), -v, v).astype(np.float32)
    v.setflags(write=False)
    return v


def decode_elements(codes: np.ndarray, fmt: str | FloatFormat) -> np.ndarray:
    """Values (float32) of element codes produced by :func:`encode_elements`."""
    return value_table(fmt)[np.asarray(codes)]


def round_to_format(x: np.ndarray, fmt: str | FloatFormat) -> np.ndarray:
    """``x`` rounded to the format (ties to even, saturating), as float32."""
    return decode_elements(encode_elements(x, fmt), fmt)


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

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """E2M1 (4.5 bits/entry), E2M3 and E3M2 (6.5), E4M3 (8.5), g = 32, float16 scales."""
        qs = [cls(fmt="e2m1"), cls(fmt="e2m3"), cls(fmt="e4m3")]
        if rate is None:
            return qs
        qs.insert(2, cls(fmt="e3m2"))  # for a rate: element bits = ⌊rate⌋
        return [q for q in qs if q.format.bits == math.floor(rate + 1e-9)]

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``1 + e + m`` bits per entry packed, one ``scale`` in ``scale_dtype`` per group."""
        side = {"scale": side_array(self.scale_dtype, *group_grid(shape, self.group))}
        return Layout(packed_nbytes(math.prod(shape), self.format.bits), side)

    def _encode(self, x: np.ndarray) -> Encoded:
        f = self.format
        k = kernels() if x.dtype == np.float32 else None  # the FP kernel is float32 only
        x2, g = as_rows(x, self.group)
        amax = k.block_absmax(x2, g) if k else _block_absmax(x2, g)
        check_float32_range(float(amax.max()), "fp")
        scale = round_scale(amax / f.max_normal, self.scale_dtype, f.max_normal)
        self._check_precision(x2, g, scale, amax / f.max_normal)
        s = scale.astype(x2.dtype)
        d = np.where(s > 0, s, 1)
        if k:
            codes = k.pack(
                k.encode_fp(x2, g, d, False, f.emin, f.mbits, _max_code(f), f.bits), f.bits
            )
        else:
            blocks, n = group_view(x2, g)
            codes = pack(ungroup(encode_elements(blocks / d[..., None], f), n, x2.shape), f.bits)
        return Encoded(codes=codes, side={"scale": scale}, shape=x.shape, spec=self.spec)

    def _check_precision(
        self, x2: np.ndarray, g: int, scale: np.ndarray, exact: np.ndarray
    ) -> None:
        """Refuse rows whose stored scales are too small to be precise (see ``limits``)."""
        f = self.format

        def rebuild(xr: np.ndarray, s: np.ndarray) -> np.ndarray:
            blocks, n = group_view(xr, g)
            u = blocks / np.where(s > 0, s, 1.0)[..., None]
            vals = decode_elements(encode_elements(u, f), f).astype(np.float64)
            return ungroup(vals * s[..., None], n, xr.shape)

        check_row_precision(
            x2,
            [scale],
            [exact],
            rebuild,
            what=self.spec,
            scale_dtype=self.scale_dtype,
            hint="use scale_dtype=float32" if self.scale_dtype == "float16" else "rescale the data",
        )

    def _decode(self, enc: Encoded) -> np.ndarray:
        return decode_grouped(enc, self.format, self.group, enc.side["scale"])


def decode_grouped(enc: Encoded, f: FloatFormat, group: int, scale: np.ndarray) -> np.ndarray:
    """``value(code) · s`` for element codes packed at ``f.bits`` bits, ``s`` per group (float32)."""
    k = kernels()
    rows, n = row_shape(enc.shape, group)
    g = group_size(n, group)
    s = check_scales(scale).astype(np.float32)
    if k:
        out = k.decode_table(k.unpack(enc.codes, f.bits, enc.entries), value_table(f), s, g, n)
    else:
        codes = unpack(enc.codes, f.bits, enc.entries).reshape(rows, n)
        blocks, _ = group_view(codes, g)
        vals = decode_elements(blocks, f)
        vals *= s[..., None]
        out = ungroup(vals, n, (rows, n))
    return out.reshape(enc.shape)
