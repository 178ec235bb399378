"""Block-scaled formats: MXFP4/6/8 and MXINT8 (OCP MX v1.0), NVFP4 (NVIDIA).

**MX** (``mxfp4``, ``mxfp6:elem=e2m3|e3m2``, ``mxfp8:elem=e4m3|e5m2``, ``mxint8``): blocks of
``k = 32`` consecutive entries along the last axis share one E8M0 scale ``X = 2^E``::

    E = clamp(⌊log2 amax⌋ − emax_elem, −127, 127)      stored as the uint8 E + 127
    element = Q_elem(x / X)       (round to nearest even, saturating to ±max of the element)
    x̂ = X · value(element)

with ``emax_elem = ⌊log2 max_elem⌋``: E2M1 2, E2M3 2, E3M2 4, E4M3 8, E5M2 15, INT8 0. Since
``amax / X ∈ [2^emax, 2^(emax+1))`` can exceed the element's largest value (E2M1: ``[4, 8)`` vs 6),
the largest entries of a block may saturate (as the specification prescribes). An all-zero block
stores ``E = −127``. MXINT8 elements are two's-complement integers ``c`` with an implied scale
``2^−6`` (value ``c/64``); we use the symmetric range ``c ∈ [−127, 127]`` (the specification allows
implementations to leave ``−128`` unused; this matches the Microsoft ``microxcaling`` reference).
Rates: ``bits_elem + 8/32``: MXFP4 4.25, MXFP6 6.25, MXFP8 and MXINT8 8.25 bits/entry.

**NVFP4** (``nvfp4``): E2M1 elements in blocks of 16 with an E4M3 block scale and one FP32 tensor
scale::

    s_t = fl32(amax_tensor / (448 · 6))                   stored as float32
    b   = E4M3(amax_block / (6 · s_t))                    stored as the uint8 E4M3 code
    S   = fl32(s_t · value(b));  element = E2M1(x / S);   x̂ = S · value(element)

(``fl32`` = rounding to float32; encoder and decoder use the same ``S``). A block whose scale
rounds to E4M3 zero while it is not all zero stores the smallest E4M3 subnormal ``2^−9`` instead.
Rate: ``4 + 8/16 = 4.5`` bits/entry plus 32 bits for the tensor.

In every format a last block shorter than the block size (row length not divisible by it) is
padded by repeating the row's last entry for the computation; the padding is not stored.
Decoding returns float32. Edges: every float32 input encodes -- for ``max|x| < 2^128`` the shared
exponent is at most ``127 − emax_elem``, so the largest decoded value ``max_elem·2^E`` stays below
``2^128`` (e.g. MXFP4: ``6·2^125 = 2.6e38``), and blocks near the float32 maximum saturate like any
other block; float64 input with ``max|x| ≥ 2^128`` (beyond float32) raises ``ValueError``. At the
small end the E8M0 scale stops at ``2^−127``: a block with ``max|x| < 2^(emax_elem − 126)``
(MXFP4: 2.4e-38) is quantized on the element grid times ``2^−127``, i.e. with an absolute error of
at most half the element's smallest step times ``2^−127`` (MXFP4 ``2^−129`` = 1.5e-39, MXINT8
``2^−134``), as the specification prescribes. NVFP4 decodes to float32 as well: input beyond the
float32 range raises ``ValueError``. Its block scales are E4M3 multiples of the tensor scale, with
absolute precision ``2^−9·s_t`` in the E4M3 subnormals: a block whose ``max|x|`` is below
``6·2^−6·s_t`` (about 1.4e-4 of the tensor's ``max|x|``, a per-tensor limit like the range of
``int:group=-1``) gets, on top of the format's relative error, an absolute error of up to
``6·2^−10·s_t`` (2.2e-6 of the tensor's ``max|x|``), and much smaller blocks decode as zeros.

References
----------
.. [1] OCP Microscaling Formats (MX) Specification v1.0, 2023.
.. [2] B. D. Rouhani et al., "Microscaling data formats for deep learning", arXiv:2310.10537.
.. [3] NVIDIA, "Introducing NVFP4 for efficient and accurate low-precision inference", 2025.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.integer import as_rows, group_grid, group_view, kernels, row_shape, ungroup
from mmquant.formats.minifloat import FORMATS, decode_elements, encode_elements, value_table
from mmquant.layout import Layout, side_array
from mmquant.packing import pack, packed_nbytes, unpack
from mmquant.validation import check_choice

__all__ = [
    "MXElement",
    "MX_ELEMENTS",
    "MX_BLOCK",
    "NVFP4_BLOCK",
    "mx_encode",
    "mx_decode",
    "nvfp4_encode",
    "nvfp4_decode",
    "MXFP4",
    "MXFP6",
    "MXFP8",
    "MXINT8",
    "NVFP4",
]

MX_BLOCK = 32  # OCP MX v1.0 block size k
NVFP4_BLOCK = 16
E8M0_BIAS = 127  # E8M0 code = E + 127, E in [-127, 127] (255 = NaN, never written)
E4M3_MAX = 448.0
E2M1_MAX = 6.0
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


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


def _amax(blocks: np.ndarray) -> np.ndarray:
    return np.maximum(blocks.max(axis=-1), -blocks.min(axis=-1)).astype(np.float64) + 0.0


def _mx_exponents(amax: np.ndarray, el: MXElement) -> np.ndarray:
    """Shared exponents ``E = clamp(⌊log2 amax⌋ − emax, −127, 127)`` (−127 for all-zero blocks).

    For ``amax < 2^128`` (every float32), ``E ≤ 127 − emax`` and the largest decoded value
    ``max_elem · 2^E < 2^(emax+1) · 2^(127−emax) = 2^128`` is finite in float32; larger (float64)
    input is refused.
    """
    if amax.size and float(amax.max()) >= 2.0**128:  # decoded values must stay finite in float32
        raise ValueError(
            "MX formats decode to float32: max|x| must be below 2^128 (the float32 range, "
            f"3.4e38), got {amax.max():.3g}"
        )
    _, e2 = np.frexp(amax)  # amax = f·2^e2, f in [0.5, 1): ⌊log2 amax⌋ = e2 − 1
    expo = np.where(amax > 0, e2 - 1 - el.emax, -E8M0_BIAS)
    return np.clip(expo, -E8M0_BIAS, E8M0_BIAS)


def _mx_table(el: MXElement) -> np.ndarray:
    if el.fp is not None:
        return value_table(el.fp)
    c = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)
    return c * np.float32(2.0**-el.frac)


def mx_encode(x: np.ndarray, elem: str) -> tuple[np.ndarray, np.ndarray]:
    """MX-encode ``x`` along its last axis (blocks of 32); numpy reference.

    Returns
    -------
    codes : numpy.ndarray
        ``uint8`` element codes, shape of ``x`` (FP: the ``ml_dtypes`` bit pattern; INT8: two's
        complement).
    scale : numpy.ndarray
        ``uint8`` E8M0 codes ``E + 127``, shape ``(rows, ceil(n/32))``.
    """
    el = MX_ELEMENTS[elem]
    blocks, n = group_view(x, MX_BLOCK)
    expo = _mx_exponents(_amax(blocks), el)
    inv = np.ldexp(np.ones(expo.shape), -expo).astype(blocks.dtype)  # 2^−E, exact
    t = blocks * inv[..., None]
    if el.fp is not None:
        codes = encode_elements(t, el.fp)
    else:
        t *= 2**el.frac
        np.rint(t, out=t)
        np.clip(t, -el.int_max, el.int_max, out=t)
        codes = t.astype(np.int8).view(np.uint8)
    return ungroup(codes, n, x.shape), (expo + E8M0_BIAS).astype(np.uint8)


def _mx_encode_fast(k: Any, x: np.ndarray, el: MXElement) -> tuple[np.ndarray, np.ndarray]:
    """Packed codes and E8M0 scales with the numba kernels (bit-exact with :func:`mx_encode`)."""
    x2, g = as_rows(x, MX_BLOCK)
    expo = _mx_exponents(k.block_absmax(x2, g), el)
    inv = np.ldexp(np.ones(expo.shape), -expo).astype(x2.dtype)
    if el.fp is not None:
        f = FORMATS[el.fp]
        codes = k.encode_fp(x2, g, inv, True, f.emin, f.mbits, f.max_code, f.bits)
    else:
        codes = k.encode_mul_int(x2, g, inv, 2.0**el.frac, -el.int_max, el.int_max)
    return k.pack(codes, el.bits), (expo + E8M0_BIAS).astype(np.uint8)


def mx_decode(codes: np.ndarray, scale: np.ndarray, elem: str) -> np.ndarray:
    """Inverse of :func:`mx_encode` (float32, shape of ``codes``); numpy reference."""
    el = MX_ELEMENTS[elem]
    blocks, n = group_view(codes, MX_BLOCK)
    vals = _mx_table(el)[blocks]
    vals *= _e8m0_values(scale)[..., None]
    return ungroup(vals, n, codes.shape)


def _e8m0_values(scale: np.ndarray) -> np.ndarray:
    return np.ldexp(np.float32(1.0), scale.astype(np.int32) - E8M0_BIAS).astype(np.float32)


def _nvfp4_scales(amax: np.ndarray) -> tuple[np.ndarray, np.float32, np.ndarray]:
    """E4M3 block-scale codes, FP32 tensor scale and the float32 block scales ``S``."""
    amax_t = float(amax.max())
    if amax_t > float(np.finfo(np.float32).max):  # decoded values are float32
        raise ValueError(
            f"NVFP4 cannot represent max|x| = {amax_t:.3g}: beyond the float32 range (3.4e38)"
        )
    s_t = np.float32(amax_t / (E4M3_MAX * E2M1_MAX))
    if s_t == 0 and amax_t > 0:
        s_t = np.float32(_F32_TINY)
    b_code = encode_elements(amax / (E2M1_MAX * float(s_t)) if s_t > 0 else amax * 0, "e4m3")
    b_code[(b_code == 0) & (amax > 0)] = 1  # smallest E4M3 subnormal 2^-9, never a zero scale
    return b_code, s_t, _block_scale(b_code, s_t)


def nvfp4_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NVFP4-encode ``x`` along its last axis (blocks of 16); numpy reference.

    Returns
    -------
    codes : numpy.ndarray
        ``uint8`` E2M1 codes, shape of ``x``.
    block_scale : numpy.ndarray
        ``uint8`` E4M3 codes, shape ``(rows, ceil(n/16))``.
    tensor_scale : numpy.ndarray
        ``float32`` array of shape ``(1,)``: ``s_t = amax/(448·6)``.
    """
    blocks, n = group_view(x, NVFP4_BLOCK)
    b_code, s_t, big_s = _nvfp4_scales(_amax(blocks))
    t = blocks / np.where(big_s > 0, big_s, 1).astype(blocks.dtype)[..., None]
    codes = encode_elements(t, "e2m1")
    return ungroup(codes, n, x.shape), b_code, np.array([s_t], np.float32)


def _block_scale(b_code: np.ndarray, s_t: np.float32) -> np.ndarray:
    return decode_elements(b_code, "e4m3") * np.float32(s_t)  # float32 product: S


def nvfp4_decode(
    codes: np.ndarray, block_scale: np.ndarray, tensor_scale: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`nvfp4_encode` (float32, shape of ``codes``); numpy reference."""
    blocks, n = group_view(codes, NVFP4_BLOCK)
    vals = decode_elements(blocks, "e2m1")
    vals *= _block_scale(block_scale, np.float32(tensor_scale[0]))[..., None]
    return ungroup(vals, n, codes.shape)


# ---------------------------------------------------------------------------------------------
# Registered quantizers
# ---------------------------------------------------------------------------------------------
class _MXQuantizer(Quantizer):
    """Shared encode/decode of the MX families; subclasses set the element."""

    elements: tuple[str, ...] = ()

    @property
    def element(self) -> MXElement:
        """The element type of this configuration."""
        return MX_ELEMENTS[self._elem()]

    def _elem(self) -> str:
        return getattr(self, "elem", self.elements[0])

    def nominal_rate(self) -> float:
        """Bits per entry on rows divisible by 32: ``bits_elem + 8/32``."""
        return self.element.bits + 8 / MX_BLOCK

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """Every element choice of the family (one for MXFP4/MXINT8, two for MXFP6/MXFP8)."""
        qs = [cls(elem=e) if len(cls.elements) > 1 else cls() for e in cls.elements]
        if rate is None:
            return qs
        return [q for q in qs if abs(q.nominal_rate() - rate) <= 0.5]

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits_elem`` per entry packed, one uint8 E8M0 ``scale`` per block of 32 of a row."""
        side = {"scale": side_array("uint8", *group_grid(shape, MX_BLOCK))}
        return Layout(packed_nbytes(math.prod(shape), self.element.bits), side)

    def _encode(self, x: np.ndarray) -> Encoded:
        k = kernels() if x.dtype == np.float32 or self.element.fp is None else None
        if k:
            packed, scale = _mx_encode_fast(k, x, self.element)
        else:
            codes, scale = mx_encode(x, self._elem())
            packed = pack(codes, self.element.bits)
        return Encoded(codes=packed, side={"scale": scale}, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        el = self.element
        if enc.side["scale"].size and int(enc.side["scale"].max()) > 2 * E8M0_BIAS:
            raise ValueError("corrupt side information: an E8M0 'scale' is 255 (NaN)")
        k = kernels()
        if k:
            _, n = row_shape(enc.shape, 0)
            codes = k.unpack(enc.codes, el.bits, enc.entries)
            s = _e8m0_values(enc.side["scale"])
            return k.decode_table(codes, _mx_table(el), s, MX_BLOCK, n).reshape(enc.shape)
        codes = unpack(enc.codes, el.bits, enc.entries).reshape(enc.shape)
        return mx_decode(codes, enc.side["scale"], el.name)


@register("mxfp4")
@dataclass(frozen=True)
class MXFP4(_MXQuantizer):
    """OCP MXFP4: E2M1 elements, blocks of 32, E8M0 scale (4.25 bits/entry)."""

    elements = ("e2m1",)
    description = "OCP MXFP4: E2M1 elements, 32-blocks, E8M0 scale (4.25 bits)"


@register("mxfp6")
@dataclass(frozen=True)
class MXFP6(_MXQuantizer):
    """OCP MXFP6: E2M3 or E3M2 elements, blocks of 32, E8M0 scale (6.25 bits/entry)."""

    elem: str = "e2m3"
    elements = ("e2m3", "e3m2")
    description = "OCP MXFP6: E2M3/E3M2 elements, 32-blocks, E8M0 scale (6.25 bits)"

    def __post_init__(self) -> None:
        check_choice(self.elem, "elem", self.elements)


@register("mxfp8")
@dataclass(frozen=True)
class MXFP8(_MXQuantizer):
    """OCP MXFP8: E4M3 or E5M2 elements, blocks of 32, E8M0 scale (8.25 bits/entry)."""

    elem: str = "e4m3"
    elements = ("e4m3", "e5m2")
    description = "OCP MXFP8: E4M3/E5M2 elements, 32-blocks, E8M0 scale (8.25 bits)"

    def __post_init__(self) -> None:
        check_choice(self.elem, "elem", self.elements)


@register("mxint8")
@dataclass(frozen=True)
class MXINT8(_MXQuantizer):
    """OCP MXINT8: 8-bit integers (scale 2^−6), blocks of 32, E8M0 scale (8.25 bits/entry)."""

    elements = ("int8",)
    description = "OCP MXINT8: INT8 elements (x 2^-6), 32-blocks, E8M0 scale (8.25 bits)"


@register("nvfp4")
@dataclass(frozen=True)
class NVFP4(Quantizer):
    """NVFP4: E2M1 elements, blocks of 16, E4M3 block scale, FP32 tensor scale (4.5 bits/entry)."""

    description = "NVFP4: E2M1, 16-blocks, E4M3 block scale + FP32 tensor scale (4.5 bits)"

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """The one configuration (nominal 4.5 bits/entry)."""
        return [cls()] if rate is None or abs(rate - 4.5) <= 0.5 else []

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """4 bits per entry packed, one uint8 E4M3 ``block_scale`` per block of 16 of a row,
        one float32 ``tensor_scale``."""
        side = {
            "block_scale": side_array("uint8", *group_grid(shape, NVFP4_BLOCK)),
            "tensor_scale": side_array("float32", 1),
        }
        return Layout(packed_nbytes(math.prod(shape), 4), side)

    def _encode(self, x: np.ndarray) -> Encoded:
        k = kernels() if x.dtype == np.float32 else None  # the FP kernel is float32 only
        if k:
            x2, g = as_rows(x, NVFP4_BLOCK)
            b, s_t, big_s = _nvfp4_scales(k.block_absmax(x2, g))
            d = np.where(big_s > 0, big_s, 1).astype(x2.dtype)
            f = FORMATS["e2m1"]
            packed = k.pack(k.encode_fp(x2, g, d, False, f.emin, f.mbits, f.max_code, 4), 4)
            s_t = np.array([s_t], np.float32)
        else:
            codes, b, s_t = nvfp4_encode(x)
            packed = pack(codes, 4)
        side = {"block_scale": b, "tensor_scale": s_t}
        return Encoded(codes=packed, side=side, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        b, s_t = enc.side["block_scale"], enc.side["tensor_scale"]
        # the encoder writes non-negative, non-NaN E4M3 codes (0x00..0x7E) and a finite s_t ≥ 0
        if (b.size and int(b.max()) >= 0x7F) or not (np.isfinite(s_t[0]) and s_t[0] >= 0):
            raise ValueError(
                "corrupt side information: an E4M3 'block_scale' is negative or NaN, or "
                "'tensor_scale' is negative or not finite"
            )
        k = kernels()
        if k:
            _, n = row_shape(enc.shape, 0)
            codes = k.unpack(enc.codes, 4, enc.entries)
            big_s = _block_scale(b, np.float32(s_t[0]))
            out = k.decode_table(codes, value_table("e2m1"), big_s, NVFP4_BLOCK, n)
            return out.reshape(enc.shape)
        codes = unpack(enc.codes, 4, enc.entries).reshape(enc.shape)
        return nvfp4_decode(codes, b, s_t)
