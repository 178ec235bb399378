"""Element formats as data: the tables every block format, and :mod:`mmquant.theory`, read.

An *element map* turns a scaled value ``u = x / s`` (``s`` the block scale) into a code and back:

* :class:`IntElements` -- a uniform integer grid ``c = clip(rint(u·mult), lo, hi)``, stored as
  offset binary ``c + add`` (INT) or as two's complement (MXINT8); value ``(c − add)/mult``;
* :class:`FloatElements` -- a minifloat ExMy (one row of :data:`FORMATS`), rounded to nearest,
  ties to even, saturating (:func:`encode_elements`);
* :class:`CodebookElements` -- a sorted codebook: the index of the cell among its thresholds
  (``searchsorted(thresholds, u, "right")``; by default the midpoints of the points).

Each has ``bits`` (packed width), ``table`` (float32 value of every code, the decoder's lookup),
``unit`` (the value a block's absmax maps to: ``qmax``, the largest normal, 1 for codebooks) and
``peak`` (the largest value the encoder emits, for the float32 guards of the scales), a numpy
reference :meth:`codes` and :meth:`kernel_codes`, the fused numba kernel of
:mod:`mmquant.kernels.formats` that scales and maps a whole ``(rows, n)`` array (bit-exact).

The constants (OCP 8-bit floating point v1.0, OCP MX v1.0; NF4 from QLoRA):

====== === === ==== ========= ========== =================
format  e   m  bias max        min normal ml_dtypes
====== === === ==== ========= ========== =================
e2m1    2   1   1   6.0        1.0        float4_e2m1fn
e2m3    2   3   1   7.5        1.0        float6_e2m3fn
e3m2    3   2   3   28.0       0.25       float6_e3m2fn
e4m3    4   3   7   448.0      2^-6       float8_e4m3fn
e5m2    5   2   15  57344.0    2^-14      float8_e5m2
====== === === ==== ========= ========== =================

Minifloat values (``e`` exponent bits, ``m`` mantissa bits, bias ``B``, ``emin = 1 − B``)::

    code = sign·2^(e+m) + E·2^m + M
    value = (−1)^sign · 2^(E−B) · (1 + M/2^m)      (E ≥ 1, normal)
          = (−1)^sign · 2^emin · M/2^m               (E = 0, subnormal)

:func:`encode_elements` rounds with ``E_x = ⌊log2|x|⌋`` read from the float's exponent bits and
the quantum ``q = 2^(max(E_x, emin) − m)`` (a power of two, so ``|x|/q`` is exact):
``t = rint(|x|/q)`` (ties to even), code magnitude ``(max(E_x, emin) − emin)·2^m + t`` (a carry
``t = 2^(m+1)`` moves to the next exponent by itself), capped at the largest finite code. It is
bit-exact with ``ml_dtypes`` within the range and never emits NaN/Inf codes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mmquant.validation import check_choice

__all__ = [
    "FloatFormat",
    "FORMATS",
    "get_format",
    "encode_elements",
    "decode_elements",
    "round_to_format",
    "value_table",
    "MXElement",
    "MX_ELEMENTS",
    "NF4_LEVELS",
    "nf4_levels_from_definition",
    "check_points",
    "codebook_thresholds",
    "IntElements",
    "FloatElements",
    "CodebookElements",
    "ElementMap",
]


# ---------------------------------------------------------------------------------------------
# Minifloats
# ---------------------------------------------------------------------------------------------
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
    def min_subnormal(self) -> float:
        """Smallest positive magnitude, ``2^(emin − m)``."""
        return self.min_normal * 2.0**-self.mbits

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
_CHUNK = 1 << 16  # entries per step of encode_elements


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


# ---------------------------------------------------------------------------------------------
# MX element types
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MXElement:
    """An MX element type: its bits and ``emax_elem`` (``fp`` names a :data:`FORMATS` row).

    For the integer element (``fp=None``) the value of code ``c`` is ``c · 2^−frac``.
    """

    name: str
    bits: int
    emax: int
    fp: str | None = None
    frac: int = 0

    @property
    def int_max(self) -> int:
        """Largest code magnitude of the integer element (symmetric range)."""
        return 2 ** (self.bits - 1) - 1

    def elements(self) -> ElementMap:
        """The element map of this type (minifloat, or two's-complement integers ``c/2^frac``)."""
        if self.fp is not None:
            return FloatElements(FORMATS[self.fp])
        m = self.int_max
        return IntElements(self.bits, -m, m, twos=True, mult=2.0**self.frac)


MX_ELEMENTS: dict[str, MXElement] = {
    e.name: e
    for e in (
        MXElement("e2m1", 4, FORMATS["e2m1"].emax, fp="e2m1"),  # emax 2
        MXElement("e2m3", 6, FORMATS["e2m3"].emax, fp="e2m3"),  # emax 2
        MXElement("e3m2", 6, FORMATS["e3m2"].emax, fp="e3m2"),  # emax 4
        MXElement("e4m3", 8, FORMATS["e4m3"].emax, fp="e4m3"),  # emax 8
        MXElement("e5m2", 8, FORMATS["e5m2"].emax, fp="e5m2"),  # emax 15
        MXElement("int8", 8, 0, frac=6),  # values c/64, c in [-127, 127]
    )
}


# ---------------------------------------------------------------------------------------------
# Codebooks
# ---------------------------------------------------------------------------------------------
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
    """The NF4 levels computed from their definition (float64; see :mod:`.nonuniform`)."""
    from scipy.stats import norm

    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return v / v.max()


def check_points(points: ArrayLike) -> np.ndarray:
    """``points`` as float32 if they are 2..256 finite, strictly increasing values (else ValueError)."""
    p = np.asarray(points, dtype=np.float32).reshape(-1)
    if p.size < 2 or p.size > 256:
        raise ValueError(f"a codebook needs 2..256 points, got {p.size}")
    if not np.all(np.isfinite(p)) or np.any(np.diff(p) <= 0):
        raise ValueError("codebook points must be finite and strictly increasing")
    return p


def codebook_thresholds(points: ArrayLike) -> np.ndarray:
    """Midpoints ``(c_i + c_{i+1})/2`` of a strictly increasing codebook (float32, ``K − 1``)."""
    p = check_points(points).astype(np.float64)
    return ((p[:-1] + p[1:]) / 2).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Element maps
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntElements:
    """Uniform integers ``c = clip(rint(u·mult), lo, hi)``; offset binary ``c + add`` or two's complement.

    Attributes
    ----------
    bits : int
        Packed width.
    lo, hi : int
        Range of ``c``.
    add : int
        Offset of the stored code (``qmax`` for symmetric INT, 0 for affine INT).
    twos : bool
        Store ``c`` as two's complement (MXINT8) instead of ``c + add``.
    mult : float
        Scale applied after the block scale (MXINT8: ``2^frac``); value ``c/mult``.
    """

    bits: int
    lo: int
    hi: int
    add: int = 0
    twos: bool = False
    mult: float = 1.0

    @property
    def unit(self) -> float:
        """Value a block's absmax maps to (``hi/mult``)."""
        return self.hi / self.mult

    @property
    def peak(self) -> float:
        """Largest emitted magnitude."""
        return max(abs(self.lo), abs(self.hi)) / self.mult

    @functools.cached_property
    def table(self) -> np.ndarray:
        """float32 value of every code."""
        if self.twos:
            c = np.arange(2**self.bits, dtype=np.uint8).view(np.int8).astype(np.float32)
        else:
            c = np.arange(2**self.bits, dtype=np.float32) - np.float32(self.add)
        return c * np.float32(1.0 / self.mult) if self.mult != 1.0 else c

    def codes(self, u: np.ndarray) -> np.ndarray:
        """uint8 codes of scaled values ``u`` (float array, overwritten)."""
        if self.mult != 1.0:
            u *= self.mult
        np.rint(u, out=u)
        np.clip(u, self.lo, self.hi, out=u)
        if self.twos:
            return u.astype(np.int8).view(np.uint8)
        u += self.add
        return u.astype(np.uint8)

    def kernel_codes(
        self, k: Any, x2: np.ndarray, g: int, d: np.ndarray, off: np.ndarray | None, mul: bool
    ) -> np.ndarray:
        """The numba kernel of :meth:`codes` on ``x·d`` (``mul``) or ``(x − off)/d``."""
        if mul:
            return k.encode_mul_int(x2, g, d, self.mult, self.lo, self.hi)
        return k.encode_div_int(x2, g, d, off, self.lo, self.hi, self.add)

    def kernel_dtypes(self) -> tuple[np.dtype, ...]:
        """Input dtypes the kernel takes."""
        return (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class FloatElements:
    """Minifloat elements (one row of :data:`FORMATS`)."""

    format: FloatFormat

    @property
    def bits(self) -> int:
        """Packed width ``1 + e + m``."""
        return self.format.bits

    @property
    def unit(self) -> float:
        """Largest normal (a block's absmax maps to it)."""
        return self.format.max_normal

    @property
    def peak(self) -> float:
        """Largest normal."""
        return self.format.max_normal

    @property
    def table(self) -> np.ndarray:
        """:func:`value_table` of the format."""
        return value_table(self.format)

    def codes(self, u: np.ndarray) -> np.ndarray:
        """:func:`encode_elements` of ``u``."""
        return encode_elements(u, self.format)

    def kernel_codes(
        self, k: Any, x2: np.ndarray, g: int, d: np.ndarray, off: np.ndarray | None, mul: bool
    ) -> np.ndarray:
        """The numba kernel (float32 only) of :meth:`codes` on ``x·d`` or ``x/d``."""
        f = self.format
        return k.encode_fp(x2, g, d, mul, f.emin, f.mbits, f.max_code, f.bits)

    def kernel_dtypes(self) -> tuple[np.dtype, ...]:
        """Input dtypes the kernel takes (float32: the exponent is read from the bits)."""
        return (np.dtype(np.float32),)


@dataclass(frozen=True, eq=False)
class CodebookElements:
    """A sorted codebook: code = number of thresholds ``≤ u``; value ``points[code]``.

    Attributes
    ----------
    points : numpy.ndarray
        float32, strictly increasing (2..256).
    thresholds : numpy.ndarray
        float32 cell boundaries (``K − 1``); default the midpoints of the points.
    """

    points: np.ndarray
    thresholds: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.thresholds is None:  # midpoints of checked points
            p = check_points(self.points)
            t = codebook_thresholds(p)
        else:  # a designed codebook (the companders): taken as given
            p, t = self.points, self.thresholds
        object.__setattr__(self, "points", np.asarray(p, np.float32).reshape(-1))
        object.__setattr__(self, "thresholds", np.asarray(t, np.float32).reshape(-1))

    @property
    def bits(self) -> int:
        """Packed width ``⌈log2 K⌉``."""
        return max(1, int(self.points.size - 1).bit_length())

    @property
    def unit(self) -> float:
        """1: the points are in units of the block scale."""
        return 1.0

    @property
    def peak(self) -> float:
        """Largest ``|point|``."""
        return float(np.abs(self.points).max())

    @property
    def table(self) -> np.ndarray:
        """The points."""
        return self.points

    def codes(self, u: np.ndarray) -> np.ndarray:
        """``searchsorted(thresholds, u, "right")`` as uint8 (a threshold goes to the upper cell)."""
        t = self.thresholds.astype(u.dtype)
        return np.searchsorted(t, u.reshape(-1), side="right").astype(np.uint8).reshape(u.shape)

    def kernel_codes(
        self, k: Any, x2: np.ndarray, g: int, d: np.ndarray, off: np.ndarray | None, mul: bool
    ) -> np.ndarray:
        """The numba kernel of :meth:`codes`: ``x/d`` (any float dtype) or ``x·d`` per row."""
        if mul:  # one multiplier per row, float32 (the companders)
            from mmquant.kernels import load

            kc = load("compander", "numba")
            return kc.encode_rows_inv(x2, d.reshape(-1), self.thresholds)
        return k.encode_codebook(x2, g, d, self.thresholds)

    def kernel_dtypes(self) -> tuple[np.dtype, ...]:
        """Input dtypes the kernel takes."""
        return (np.dtype(np.float32), np.dtype(np.float64))


#: Any of the element maps.
ElementMap = IntElements | FloatElements | CodebookElements
