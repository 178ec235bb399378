"""Block-scaled formats: MXFP4/6/8 and MXINT8 (OCP MX v1.0), NVFP4 (NVIDIA).

**MX** (``mxfp4``, ``mxfp6:elem=e2m3|e3m2``, ``mxfp8:elem=e4m3|e5m2``, ``mxint8``): blocks of
``k = 32`` consecutive entries along the last axis share one E8M0 scale ``X = 2^E``::

    E = clamp(⌊log2 amax⌋ − emax_elem, −127, 127)      stored as the uint8 E + 127 ("e8m0")
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

Every family here is a row of the block engine (:mod:`mmquant.formats.engine`): an element map
(:data:`MX_ELEMENTS`, E2M1) and a scale rule (:class:`~mmquant.formats.scales.E8M0`,
:class:`~mmquant.formats.scales.NVFP4`) with the block size. In every format a last block shorter than the block size (row length not divisible by it) is
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

import functools
from dataclasses import dataclass

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.elements import FORMATS, MX_ELEMENTS, FloatElements, MXElement
from mmquant.formats.engine import BlockFormat
from mmquant.formats.scales import E8M0, E8M0_BIAS
from mmquant.formats.scales import NVFP4 as NVFP4Scale
from mmquant.layout import Layout
from mmquant.validation import check_choice

__all__ = [
    "MXElement",
    "MX_ELEMENTS",
    "MX_BLOCK",
    "NVFP4_BLOCK",
    "E8M0_BIAS",
    "mx_format",
    "nvfp4_format",
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


@functools.cache
def mx_format(elem: str) -> BlockFormat:
    """The block format of MX with element ``elem``: E8M0 scale per block of 32."""
    el = MX_ELEMENTS[elem]
    return BlockFormat(el.elements(), E8M0(el.emax), MX_BLOCK, "mx", f"mx:{elem}")


@functools.cache
def nvfp4_format() -> BlockFormat:
    """NVFP4: E2M1 elements, E4M3 × FP32 scale per block of 16."""
    return BlockFormat(FloatElements(FORMATS["e2m1"]), NVFP4Scale(), NVFP4_BLOCK, "nvfp4", "nvfp4")


def mx_encode(x: np.ndarray, elem: str) -> tuple[np.ndarray, np.ndarray]:
    """MX-encode ``x`` along its last axis (blocks of 32).

    Returns
    -------
    codes : numpy.ndarray
        ``uint8`` element codes, shape of ``x`` (FP: the ``ml_dtypes`` bit pattern; INT8: two's
        complement).
    scale : numpy.ndarray
        ``uint8`` E8M0 codes ``E + 127``, shape ``(rows, ceil(n/32))``.
    """
    codes, side, _ = mx_format(elem).encode_codes(x)
    return codes.reshape(x.shape), side["e8m0"]


def mx_decode(codes: np.ndarray, scale: np.ndarray, elem: str) -> np.ndarray:
    """Inverse of :func:`mx_encode` (float32, shape of ``codes``)."""
    return mx_format(elem).decode_codes(codes.reshape(-1), {"e8m0": scale}, codes.shape)


def nvfp4_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NVFP4-encode ``x`` along its last axis (blocks of 16).

    Returns
    -------
    codes : numpy.ndarray
        ``uint8`` E2M1 codes, shape of ``x``.
    block_scale : numpy.ndarray
        ``uint8`` E4M3 codes, shape ``(rows, ceil(n/16))``.
    tensor_scale : numpy.ndarray
        ``float32`` array of shape ``(1,)``: ``s_t = amax/(448·6)``.
    """
    codes, side, _ = nvfp4_format().encode_codes(x)
    return codes.reshape(x.shape), side["block_scale"], side["tensor_scale"]


def nvfp4_decode(
    codes: np.ndarray, block_scale: np.ndarray, tensor_scale: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`nvfp4_encode` (float32, shape of ``codes``)."""
    side = {"block_scale": block_scale, "tensor_scale": tensor_scale}
    return nvfp4_format().decode_codes(codes.reshape(-1), side, codes.shape)


# ---------------------------------------------------------------------------------------------
# Registered quantizers
# ---------------------------------------------------------------------------------------------
class _BlockQuantizer(Quantizer):
    """Encode/decode/layout through the quantizer's :meth:`block_format`."""

    def block_format(self) -> BlockFormat:  # pragma: no cover - abstract
        raise NotImplementedError

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """Packed element codes and the scale rule's side arrays (see the module docstring)."""
        return self.block_format().layout(shape)

    def _encode(self, x: np.ndarray) -> Encoded:
        codes, side = self.block_format().encode(x)
        return Encoded(codes=codes, side=side, shape=x.shape, spec=self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        return self.block_format().decode(enc.codes, enc.side, enc.shape)


class _MXQuantizer(_BlockQuantizer):
    """Shared part of the MX families; subclasses set the element."""

    elements: tuple[str, ...] = ()

    @property
    def element(self) -> MXElement:
        """The element type of this configuration."""
        return MX_ELEMENTS[self._elem()]

    def _elem(self) -> str:
        return getattr(self, "elem", self.elements[0])

    def block_format(self) -> BlockFormat:
        """The engine's description: element, E8M0 scale per 32-block."""
        return mx_format(self._elem())

    def nominal_rate(self, n: int | None = None) -> float:
        """Bits per entry on rows divisible by 32: ``bits_elem + 8/32``."""
        return self.element.bits + 8 / MX_BLOCK

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """Every element choice of the family (one for MXFP4/MXINT8, two for MXFP6/MXFP8)."""
        return [cls(elem=e) if len(cls.elements) > 1 else cls() for e in cls.elements]


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
class NVFP4(_BlockQuantizer):
    """NVFP4: E2M1 elements, blocks of 16, E4M3 block scale, FP32 tensor scale (4.5 bits/entry)."""

    description = "NVFP4: E2M1, 16-blocks, E4M3 block scale + FP32 tensor scale (4.5 bits)"

    def block_format(self) -> BlockFormat:
        """The engine's description: E2M1, E4M3 × FP32 scale per 16-block."""
        return nvfp4_format()

    def nominal_rate(self, n: int | None = None) -> float:
        """``4 + 8/16`` bits per entry (and the tensor scale, negligible)."""
        return 4.0 + 8 / NVFP4_BLOCK

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """The one configuration (4.5 bits/entry)."""
        return [cls()]
