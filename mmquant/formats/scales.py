"""Scale rules of the block engine: how a group's scale is computed, stored and read back.

Each rule names its side arrays (one meaning per key, see :data:`mmquant.layout.SIDE_KEYS`):

=============== ================================= ========================= ======================
rule            stored                            ``u`` (element input)     families
=============== ================================= ========================= ======================
:class:`Absmax` ``absmax``: ``fl(amax/unit)``     ``x / s``                 int, fp, nf4
                float16|float32 per group
:class:`MinMax` ``step``: ``fl((max−min)/top)``,  ``(x − offset) / step``   int:affine=true
                ``offset``: ``fl(min)``
:class:`E8M0`   ``e8m0``: uint8 ``E + 127``,      ``x · 2^−E``              mxfp4/6/8, mxint8
                ``E = ⌊log2 amax⌋ − emax_elem``
:class:`NVFP4`  ``block_scale``: E4M3 code ``b``, ``x / (s_t·value(b))``    nvfp4
                ``tensor_scale``: float32 ``s_t``
:class:`RowRMS` ``rms``: ``fl(√mean x²)`` per row ``fl32(x) · fl32(1/σ)``   compander, lloydmax,
                                                                            uniform, datacompander
=============== ================================= ========================= ======================

(``unit`` = the element value a block's absmax maps to: ``qmax``, the largest normal, 1 for
codebooks.) ``fit`` returns the side arrays, the divisor or multiplier ``d`` per group (in the
dtype of the work), the offsets, and whether ``d`` multiplies; ``scales`` reads float32 scales
(and offsets) back from a record after checking the stored values (corrupt side information is a
``ValueError`` naming the array). The float rules store through :func:`round_scale` and refuse
rows too small for their dtype (:func:`mmquant.formats.limits.check_row_precision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mmquant.formats.elements import FORMATS, FloatFormat, decode_elements, encode_elements
from mmquant.formats.engine import group_view
from mmquant.formats.limits import check_float32_range, check_row_precision, fit_float32_peak
from mmquant.layout import SideArray, side_array

__all__ = [
    "SCALE_DTYPES",
    "Absmax",
    "MinMax",
    "E8M0",
    "NVFP4",
    "RowRMS",
    "round_scale",
    "round_offset",
    "check_scales",
    "block_absmax",
    "block_minmax",
    "row_rms",
    "store_rms",
    "mx_exponents",
    "nvfp4_scales",
    "E8M0_BIAS",
]

SCALE_DTYPES = ("float16", "float32")
E8M0_BIAS = 127  # E8M0 code = E + 127, E in [-127, 127] (255 = NaN, never written)
_F16_MAX = float(np.finfo(np.float16).max)  # 65504.0
_F16_TINY = float(np.finfo(np.float16).smallest_subnormal)  # 5.96e-08
_F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45
_SS_LOW = 2.0**-100  # a sum of squares below this may have lost digits to underflow


# ---------------------------------------------------------------------------------------------
# Storage of float scales
# ---------------------------------------------------------------------------------------------
def round_scale(s: np.ndarray, scale_dtype: str, peak: float = 1.0) -> np.ndarray:
    """Round nonnegative scales to their stored dtype, with the documented guards.

    A nonzero scale that would underflow to 0 is stored as the smallest positive subnormal of the
    dtype; a scale beyond the dtype's range raises ``ValueError``; a float32 scale whose decoded
    peak ``fl32(s·peak)`` would overflow is lowered to the largest float32 that keeps it finite.

    Parameters
    ----------
    s : numpy.ndarray
        Nonnegative float scales.
    scale_dtype : {"float16", "float32"}
    peak : float
        Largest magnitude of the element values the scale multiplies (``qmax`` for INT).

    Returns
    -------
    numpy.ndarray
        The scales as ``numpy.float16`` or ``numpy.float32`` (what is stored and what decode uses).
    """
    big, tiny = (_F16_MAX, _F16_TINY) if scale_dtype == "float16" else (_F32_MAX, _F32_TINY)
    smax = float(np.max(s)) if s.size else 0.0
    if smax > big:
        hint = "; use scale_dtype=float32" if scale_dtype == "float16" else ""
        raise ValueError(f"a scale of {smax:.4g} exceeds the {scale_dtype} range{hint}")
    st = s.astype(scale_dtype)
    under = (st == 0) & (s > 0)
    if under.any():
        st[under] = tiny
    if scale_dtype == "float32" and smax * peak > _F32_MAX / 2:  # (cheap test first)
        st = fit_float32_peak(st, peak)
    return st


def round_offset(lo: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Offsets (group minima) in the scale dtype; ValueError beyond its range."""
    big = _F16_MAX if scale_dtype == "float16" else _F32_MAX
    if lo.size and float(np.max(np.abs(lo))) > big:
        raise ValueError(
            f"an offset of {float(np.max(np.abs(lo))):.4g} exceeds the {scale_dtype} range"
        )
    return lo.astype(scale_dtype)


def check_scales(s: np.ndarray, name: str = "absmax") -> np.ndarray:
    """``s`` if every stored scale is finite and ≥ 0 (what the encoders write), else ValueError."""
    if s.size and not (np.all(np.isfinite(s)) and float(np.min(s)) >= 0):
        raise ValueError(f"corrupt side information: {name!r} holds a negative or non-finite scale")
    return s


def block_absmax(x2: np.ndarray, g: int, k: Any = None) -> np.ndarray:
    """``max|x|`` per group as float64 ``(rows, groups)`` (``k``: the kernels, bit-exact)."""
    if k is not None:
        return k.block_absmax(x2, g)
    blocks, _ = group_view(x2, g)
    amax = np.maximum(blocks.max(axis=-1), -blocks.min(axis=-1)).astype(np.float64)
    return amax + 0.0  # −0 → +0 (a zero scale is stored as +0)


def block_minmax(x2: np.ndarray, g: int, k: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per group as float64 ``(rows, groups)`` arrays."""
    if k is not None:
        return k.block_minmax(x2, g)
    blocks, _ = group_view(x2, g)
    lo, hi = blocks.min(axis=-1).astype(np.float64), blocks.max(axis=-1).astype(np.float64)
    return lo + 0.0, hi + 0.0


def _check_precision(fmt: Any, x2: np.ndarray, g: int, dtype: str, stored: list, exact: list):
    """Refuse rows whose stored scales are too small to be precise (see ``limits``)."""
    check_row_precision(
        x2,
        stored,
        exact,
        lambda xr, *a: fmt.rebuild(xr, g, *a),
        what=fmt.spec,
        scale_dtype=dtype,
        hint="use scale_dtype=float32" if dtype == "float16" else "rescale the data",
    )


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Absmax:
    """``s = fl(amax / unit)`` per group in float16/float32 (side key ``absmax``); ``u = x/s``."""

    dtype: str = "float16"
    key: ClassVar[str] = "absmax"
    work: ClassVar[Any] = None

    def side(self, rows: int, groups: int) -> dict[str, SideArray]:
        """One scale per group."""
        return {self.key: side_array(self.dtype, rows, groups)}

    def fit(self, x2: np.ndarray, g: int, k: Any, fmt: Any) -> tuple:
        """Side arrays, divisors, no offsets, ``mul=False``."""
        el = fmt.elements
        amax = block_absmax(x2, g, k)
        check_float32_range(float(amax.max()), fmt.name)
        scale = round_scale(amax / el.unit, self.dtype, el.peak)
        _check_precision(fmt, x2, g, self.dtype, [scale], [amax / el.unit])
        s = scale.astype(x2.dtype)
        return {self.key: scale}, np.where(s > 0, s, x2.dtype.type(1)), None, False

    def scales(self, side: Any) -> tuple[np.ndarray, None]:
        """float32 scales (ValueError if negative or not finite)."""
        return check_scales(side[self.key], self.key).astype(np.float32), None


@dataclass(frozen=True)
class MinMax:
    """Affine: ``step = fl((max − min)/top)``, ``offset = fl(min)``; ``u = (x − offset)/step``."""

    dtype: str = "float16"
    work: ClassVar[Any] = None

    def side(self, rows: int, groups: int) -> dict[str, SideArray]:
        """One step and one offset per group."""
        return {
            "step": side_array(self.dtype, rows, groups),
            "offset": side_array(self.dtype, rows, groups),
        }

    def fit(self, x2: np.ndarray, g: int, k: Any, fmt: Any) -> tuple:
        """Side arrays, divisors, offsets, ``mul=False``."""
        top = fmt.elements.hi
        lo, hi = block_minmax(x2, g, k)
        check_float32_range(max(-float(lo.min()), float(hi.max())), fmt.name)
        if float((hi - lo).max()) > _F32_MAX:
            raise ValueError(
                f"{fmt.name}:affine=true: a group's range max − min = {float((hi - lo).max()):.4g} "
                f"exceeds the float32 range ({_F32_MAX:.4g}) of the decoded s·code; use "
                "affine=false"
            )
        scale = round_scale((hi - lo) / top, self.dtype)
        offset = round_offset(lo, self.dtype)
        if self.dtype == "float32":  # offset + s·top must stay finite in float32
            scale = fit_float32_peak(scale, top, offset)
        _check_precision(fmt, x2, g, self.dtype, [scale, offset], [(hi - lo) / top, lo])
        work = x2.dtype.type
        s = scale.astype(work)
        d = np.where(s > 0, s, work(1))
        return {"step": scale, "offset": offset}, d, offset.astype(work), False

    def scales(self, side: Any) -> tuple[np.ndarray, np.ndarray]:
        """float32 steps and offsets."""
        s = check_scales(side["step"], "step").astype(np.float32)
        return s, side["offset"].astype(np.float32)


def mx_exponents(amax: np.ndarray, emax: int) -> np.ndarray:
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
    expo = np.where(amax > 0, e2 - 1 - emax, -E8M0_BIAS)
    return np.clip(expo, -E8M0_BIAS, E8M0_BIAS)


def e8m0_values(codes: np.ndarray) -> np.ndarray:
    """float32 ``2^(code − 127)``."""
    return np.ldexp(np.float32(1.0), codes.astype(np.int32) - E8M0_BIAS).astype(np.float32)


@dataclass(frozen=True)
class E8M0:
    """OCP MX shared exponent: ``X = 2^E`` stored as the uint8 ``E + 127`` (key ``e8m0``)."""

    emax: int
    work: ClassVar[Any] = None

    def side(self, rows: int, groups: int) -> dict[str, SideArray]:
        """One uint8 code per block."""
        return {"e8m0": side_array("uint8", rows, groups)}

    def fit(self, x2: np.ndarray, g: int, k: Any, fmt: Any) -> tuple:
        """Side arrays, multipliers ``2^−E``, no offsets, ``mul=True``."""
        expo = mx_exponents(block_absmax(x2, g, k), self.emax)
        inv = np.ldexp(np.ones(expo.shape), -expo).astype(x2.dtype)  # 2^−E, exact
        return {"e8m0": (expo + E8M0_BIAS).astype(np.uint8)}, inv, None, True

    def scales(self, side: Any) -> tuple[np.ndarray, None]:
        """float32 ``2^E`` (ValueError for the NaN code 255)."""
        e = side["e8m0"]
        if e.size and int(e.max()) > 2 * E8M0_BIAS:
            raise ValueError("corrupt side information: an E8M0 code in 'e8m0' is 255 (NaN)")
        return e8m0_values(e), None


def nvfp4_scales(
    amax: np.ndarray, elem_max: float, block_fmt: FloatFormat = FORMATS["e4m3"]
) -> tuple[np.ndarray, np.float32, np.ndarray]:
    """E4M3 block-scale codes, FP32 tensor scale and the float32 block scales ``S``.

    ``s_t = fl32(amax_tensor/(448·elem_max))``, ``b = E4M3(amax_block/(elem_max·s_t))`` (a
    nonzero block never gets a zero scale: the smallest subnormal instead), ``S = fl32(s_t·b)``.
    """
    amax_t = float(amax.max())
    if amax_t > _F32_MAX:  # decoded values are float32
        raise ValueError(
            f"NVFP4 cannot represent max|x| = {amax_t:.3g}: beyond the float32 range (3.4e38)"
        )
    s_t = np.float32(amax_t / (block_fmt.max_normal * elem_max))
    if s_t == 0 and amax_t > 0:
        s_t = np.float32(_F32_TINY)
    b_code = encode_elements(amax / (elem_max * float(s_t)) if s_t > 0 else amax * 0, block_fmt)
    b_code[(b_code == 0) & (amax > 0)] = 1  # smallest E4M3 subnormal 2^-9, never a zero scale
    return b_code, s_t, two_level_scale(b_code, s_t, block_fmt)


def two_level_scale(
    b_code: np.ndarray, s_t: np.float32, block_fmt: FloatFormat = FORMATS["e4m3"]
) -> np.ndarray:
    """float32 ``value(b)·s_t`` (the block scale the encoder divides by and the decoder uses)."""
    return decode_elements(b_code, block_fmt) * np.float32(s_t)


@dataclass(frozen=True)
class NVFP4:
    """E4M3 block scale times an FP32 tensor scale (keys ``block_scale``, ``tensor_scale``)."""

    block_fmt: FloatFormat = FORMATS["e4m3"]
    work: ClassVar[Any] = None

    def side(self, rows: int, groups: int) -> dict[str, SideArray]:
        """One uint8 E4M3 code per block, one float32 for the tensor."""
        return {
            "block_scale": side_array("uint8", rows, groups),
            "tensor_scale": side_array("float32", 1),
        }

    def fit(self, x2: np.ndarray, g: int, k: Any, fmt: Any) -> tuple:
        """Side arrays, divisors ``S``, no offsets, ``mul=False``."""
        b, s_t, big_s = nvfp4_scales(block_absmax(x2, g, k), fmt.elements.unit, self.block_fmt)
        d = np.where(big_s > 0, big_s, 1).astype(x2.dtype)
        return {"block_scale": b, "tensor_scale": np.array([s_t], np.float32)}, d, None, False

    def scales(self, side: Any) -> tuple[np.ndarray, None]:
        """float32 block scales ``S`` (ValueError for negative/NaN codes or a bad ``s_t``)."""
        b, s_t = side["block_scale"], side["tensor_scale"]
        # the encoder writes non-negative, non-NaN E4M3 codes (0x00..0x7E) and a finite s_t ≥ 0
        if (b.size and int(b.max()) >= 0x7F) or not (np.isfinite(s_t[0]) and s_t[0] >= 0):
            raise ValueError(
                "corrupt side information: an E4M3 'block_scale' is negative or NaN, or "
                "'tensor_scale' is negative or not finite"
            )
        return two_level_scale(b, np.float32(s_t[0]), self.block_fmt), None


# ---------------------------------------------------------------------------------------------
# Row RMS (the companders)
# ---------------------------------------------------------------------------------------------
def row_rms(x2: np.ndarray) -> np.ndarray:
    """Row RMS (float64), the sum of squares accumulated in the input precision.

    float32 input accumulates in float32 (float64 otherwise, or on overflow). Rows whose sum of
    squares underflows (below 2^-100: tiny or subnormal rows, whose squares vanish in float32 and,
    below 1e-154, in float64) are recomputed as ``m·√(mean (x/m)²)`` with ``m`` the row's max:
    such a row no longer gets σ = 0 (and decodes to zeros).
    """
    xa = np.asarray(x2)
    if xa.dtype != np.float32:
        xa = xa.astype(np.float64)
    with np.errstate(over="ignore"):
        ss = np.einsum("ij,ij->i", xa, xa)  # accumulated in the input precision (fast for f32)
    if not np.all(np.isfinite(ss)):  # float32 overflow: redo in float64
        x64 = xa.astype(np.float64)
        ss = np.einsum("ij,ij->i", x64, x64)
    rms = np.sqrt(ss.astype(np.float64) / xa.shape[1])
    low = ss < _SS_LOW  # squares underflowed (to 0 or subnormals): redo scaled by the row's max
    if low.any():
        r = np.asarray(xa[low], np.float64)
        m = np.abs(r).max(axis=1)
        m1 = np.where(m > 0, m, 1.0)
        rms[low] = m * np.sqrt(np.mean((r / m1[:, None]) ** 2, axis=1))
    return rms


def store_rms(rms: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Row RMS in its stored dtype (a nonzero RMS is never stored as 0).

    Raises
    ------
    ValueError
        An RMS beyond the float16 range (use ``scale_dtype="float32"``), or, for float32, beyond
        ``float32_max/1024`` (the normalised values must be finite in float32).
    """
    if scale_dtype == "float16":
        if rms.size and float(rms.max()) > _F16_MAX:
            raise ValueError(
                f"a row RMS of {float(rms.max()):.3g} exceeds the float16 range; "
                "use scale_dtype=float32"
            )
        s = rms.astype(np.float16)
        s[(s == 0) & (rms > 0)] = np.float16(_F16_TINY)
        return s
    if rms.size and float(rms.max()) > _F32_MAX / 1024:
        raise ValueError(f"a row RMS of {float(rms.max()):.3g} is too large for float32 codes")
    return rms.astype(np.float32)


def rms_multipliers(scales: np.ndarray) -> np.ndarray:
    """float32 ``1/σ`` per row (0 where σ = 0)."""
    s = scales.astype(np.float32)
    inv = np.zeros_like(s)
    np.divide(np.float32(1.0), s, out=inv, where=s > 0)
    return inv


@dataclass(frozen=True)
class RowRMS:
    """One RMS per row (key ``rms``, 1-D); ``u = fl32(x)·fl32(1/σ)`` computed in float32."""

    dtype: str = "float16"
    work: ClassVar[Any] = np.float32

    def side(self, rows: int, groups: int) -> dict[str, SideArray]:
        """One RMS per row, a 1-D array."""
        return {"rms": side_array(self.dtype, rows)}

    def fit(self, x2: np.ndarray, g: int, k: Any, fmt: Any) -> tuple:
        """Side arrays, multipliers ``1/σ`` (float32, ``(rows, 1)``), ``mul=True``."""
        rms = row_rms(x2)
        scales = store_rms(rms, self.dtype)
        _check_precision(fmt, x2, g, self.dtype, [scales], [rms])
        return {"rms": scales}, rms_multipliers(scales).reshape(-1, 1), None, True

    def scales(self, side: Any) -> tuple[np.ndarray, None]:
        """float32 σ per row, ``(rows, 1)`` (ValueError if negative or not finite)."""
        s = side["rms"]
        if s.size and not (np.all(np.isfinite(s)) and float(np.min(s)) >= 0):
            raise ValueError("corrupt side information: 'rms' holds a negative or non-finite RMS")
        return s.astype(np.float32).reshape(-1, 1), None
