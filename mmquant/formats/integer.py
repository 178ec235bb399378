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

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.formats.limits import (
    check_float32_range,
    check_row_precision,
    fit_float32_peak,
)
from mmquant.kernels import load as load_kernels
from mmquant.layout import Layout, side_array
from mmquant.packing import pack, packed_nbytes, unpack
from mmquant.validation import check_choice, check_int

__all__ = [
    "AbsmaxInt",
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

SCALE_DTYPES = ("float16", "float32")
_F16_MAX = float(np.finfo(np.float16).max)  # 65504.0
_F16_TINY = float(np.finfo(np.float16).smallest_subnormal)  # 5.96e-08
_F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45


def group_view(x: np.ndarray, group: int) -> tuple[np.ndarray, int]:
    """Reshape ``x`` to ``(rows, groups, g)`` blocks along the last axis, padding the last one.

    The padding repeats the last entry of each row (min, max and absmax of the group unchanged).

    Parameters
    ----------
    x : numpy.ndarray
        Array of any shape; the last axis has length ``n``.
    group : int
        ``g > 0`` (blocks of ``g``; ``g ≥ n`` is one block per row, no padding), ``0`` (one block
        per row) or ``-1`` (one block for the whole tensor).

    Returns
    -------
    blocks : numpy.ndarray
        ``(rows, ceil(n/g), g)`` array, ``g = min(group, n)`` (a view when no padding is needed).
    n : int
        Row length (to drop the padding with :func:`ungroup`).
    """
    n = x.shape[-1]
    if group == -1:
        return x.reshape(1, 1, -1), n
    x2 = x.reshape(-1, n)
    g = n if group == 0 else min(group, n)  # a group longer than the row is the row
    ng = -(-n // g)
    if ng * g != n:
        xp = np.empty((x2.shape[0], ng * g), x2.dtype)
        xp[:, :n] = x2
        xp[:, n:] = x2[:, -1:]  # repeat the last entry: min, max and absmax are unchanged
        x2 = xp
    return x2.reshape(x2.shape[0], ng, g), n


def ungroup(blocks: np.ndarray, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`group_view`: drop the padding and restore ``shape``."""
    rows = math.prod(shape) // n
    flat = blocks.reshape(rows, -1)
    if flat.shape[1] != n:
        flat = flat[:, :n]
    return flat.reshape(shape)


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


def kernels() -> Any:
    """The numba kernels module :mod:`mmquant.kernels.formats`, or ``None`` for the numpy reference.

    Decided by :func:`mmquant.kernels.resolve` (``MMQUANT_KERNELS``; numba when installed); the
    kernels are bit-exact with the numpy reference.
    """
    return load_kernels("formats")


def as_rows(x: np.ndarray, group: int) -> tuple[np.ndarray, int]:
    """``x`` as a C-contiguous ``(rows, n)`` array and the group length ``g`` along its rows.

    ``group = −1`` (per tensor) gives one row holding the whole tensor; ``0`` gives ``g = n``.
    """
    rows, n = row_shape(x.shape, group)
    return np.ascontiguousarray(x.reshape(rows, n)), group_size(n, group)


def row_shape(shape: tuple[int, ...], group: int) -> tuple[int, int]:
    """``(rows, n)`` of the 2-D view used for ``group`` (``(1, size)`` per tensor)."""
    size = math.prod(shape)
    if group == -1:
        return 1, size
    return size // shape[-1], shape[-1]


def group_size(n: int, group: int) -> int:
    """Length of a group along a row of ``n`` entries (``n`` for per-row and per-tensor)."""
    return n if group <= 0 else group


def group_grid(shape: tuple[int, ...], group: int) -> tuple[int, int]:
    """``(rows, groups per row)`` of the per-group side arrays for ``shape`` and ``group``."""
    rows, n = row_shape(shape, group)
    return rows, -(-n // group_size(n, group))


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
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """INT b bits, g = 32, float16 scales (rate ``b + 0.5``); default b = 4 and 8.

        For a target rate: ``b = ⌊rate⌋`` (2..8), i.e. the codes take at most ``rate`` bits.
        """
        if rate is None:
            return [cls(bits=4), cls(bits=8)]
        b = math.floor(rate + 1e-9)
        return [cls(bits=b)] if 2 <= b <= 8 else []

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``bits`` per entry packed (:func:`mmquant.packing.packed_nbytes`), one ``scale`` (and
        with ``affine`` one ``offset``) in ``scale_dtype`` per group: ``(rows, ceil(n/g))``."""
        grid = group_grid(shape, self.group)
        side = {"scale": side_array(self.scale_dtype, *grid)}
        if self.affine:
            side["offset"] = side_array(self.scale_dtype, *grid)
        return Layout(packed_nbytes(math.prod(shape), self.bits), side)

    # -- encode / decode (numpy reference; numba kernels when available, bit-exact) ------------
    def _encode(self, x: np.ndarray) -> Encoded:
        k = kernels()
        x2, g = as_rows(x, self.group)
        work = x2.dtype.type
        if self.affine:
            top = 2**self.bits - 1
            lo, hi = k.block_minmax(x2, g) if k else _block_minmax(x2, g)
            check_float32_range(max(-float(lo.min()), float(hi.max())), "int")
            if float((hi - lo).max()) > _F32_MAX:
                raise ValueError(
                    f"int:affine=true: a group's range max − min = {float((hi - lo).max()):.4g} "
                    f"exceeds the float32 range ({_F32_MAX:.4g}) of the decoded s·code; use "
                    "affine=false"
                )
            scale = round_scale((hi - lo) / top, self.scale_dtype)
            offset = _round_offset(lo, self.scale_dtype)
            if self.scale_dtype == "float32":  # offset + s·top must stay finite in float32
                scale = fit_float32_peak(scale, top, offset)
            side = {"scale": scale, "offset": offset}
            off, clip_lo, clip_hi, add = offset.astype(work), 0, top, 0
            self._check_precision(x2, g, [scale, offset], [(hi - lo) / top, lo])
        else:
            qmax = self.qmax
            amax = k.block_absmax(x2, g) if k else _block_absmax(x2, g)
            check_float32_range(float(amax.max()), "int")
            scale = round_scale(amax / qmax, self.scale_dtype, qmax)
            side = {"scale": scale}
            off, clip_lo, clip_hi, add = None, -qmax, qmax, qmax
            self._check_precision(x2, g, [scale], [amax / qmax])
        s = scale.astype(work)
        d = np.where(s > 0, s, work(1))  # x/s is a true (correctly rounded) division
        if k:
            codes = k.pack(k.encode_div_int(x2, g, d, off, clip_lo, clip_hi, add), self.bits)
        else:
            blocks, n = group_view(x2, g)
            t = blocks - off[..., None] if off is not None else blocks.copy()
            t /= d[..., None]
            np.rint(t, out=t)
            np.clip(t, clip_lo, clip_hi, out=t)
            t += add
            codes = pack(ungroup(t.astype(np.uint8), n, x2.shape), self.bits)
        return Encoded(codes=codes, side=side, shape=x.shape, spec=self.spec)

    def _check_precision(
        self, x2: np.ndarray, g: int, stored: list[np.ndarray], exact: list[np.ndarray]
    ) -> None:
        """Refuse rows whose stored scales are too small to be precise (see ``limits``)."""
        qmax, top, affine = self.qmax, 2**self.bits - 1, self.affine

        def rebuild(xr: np.ndarray, s: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
            blocks, n = group_view(xr, g)
            d = np.where(s > 0, s, 1.0)[..., None]
            if affine:
                t = np.clip(np.rint((blocks - m[..., None]) / d), 0, top)
                return ungroup(m[..., None] + t * s[..., None], n, xr.shape)
            t = np.clip(np.rint(blocks / d), -qmax, qmax)
            return ungroup(t * s[..., None], n, xr.shape)

        check_row_precision(
            x2,
            stored,
            exact,
            rebuild,
            what=f"{self.spec}",
            scale_dtype=self.scale_dtype,
            hint="use scale_dtype=float32" if self.scale_dtype == "float16" else "rescale the data",
        )

    def _decode(self, enc: Encoded) -> np.ndarray:
        k = kernels()
        rows, n = row_shape(enc.shape, self.group)
        g = group_size(n, self.group)
        table = np.arange(2**self.bits, dtype=np.float32)
        if not self.affine:
            table -= np.float32(self.qmax)
        s = check_scales(enc.side["scale"]).astype(np.float32)
        off = enc.side["offset"].astype(np.float32) if self.affine else None
        if k:
            codes = k.unpack(enc.codes, self.bits, enc.entries)
            out = k.decode_table(codes, table, s, g, n, off)
        else:
            codes = unpack(enc.codes, self.bits, enc.entries).reshape(rows, n)
            blocks, _ = group_view(codes, g)
            vals = table[blocks]
            vals *= s[..., None]
            if off is not None:
                vals += off[..., None]
            out = ungroup(vals, n, (rows, n))
        return out.reshape(enc.shape)


def check_scales(s: np.ndarray, name: str = "scale") -> np.ndarray:
    """``s`` if every stored scale is finite and ≥ 0 (what the encoders write), else ValueError."""
    if s.size and not (np.all(np.isfinite(s)) and float(np.min(s)) >= 0):
        raise ValueError(f"corrupt side information: {name!r} holds a negative or non-finite scale")
    return s


def _block_absmax(x2: np.ndarray, g: int) -> np.ndarray:
    blocks, _ = group_view(x2, g)
    amax = np.maximum(blocks.max(axis=-1), -blocks.min(axis=-1)).astype(np.float64)
    return amax + 0.0  # −0 → +0 (a zero scale is stored as +0)


def _block_minmax(x2: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    blocks, _ = group_view(x2, g)
    lo, hi = blocks.min(axis=-1).astype(np.float64), blocks.max(axis=-1).astype(np.float64)
    return lo + 0.0, hi + 0.0


def _round_offset(lo: np.ndarray, scale_dtype: str) -> np.ndarray:
    big = _F16_MAX if scale_dtype == "float16" else _F32_MAX
    if lo.size and float(np.max(np.abs(lo))) > big:
        raise ValueError(
            f"an offset of {float(np.max(np.abs(lo))):.4g} exceeds the {scale_dtype} range"
        )
    return lo.astype(scale_dtype)
