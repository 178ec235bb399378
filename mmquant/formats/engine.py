"""The block engine: one grouped encode/decode for every scaled scalar format.

A block format is data (:class:`BlockFormat`): an **element map** (:mod:`.elements`: uniform
integers, minifloat levels or a codebook table), a **scale rule** (:mod:`.scales`: how a group's
scale is computed and in which dtype it is stored) and a **group** along the last axis
(``g > 0`` consecutive entries, ``0`` per row, ``−1`` per tensor). The engine

1. groups the last axis (:func:`group_view`: a short last group is padded by repeating the row's
   last entry for the computation; the padding is never stored),
2. computes and stores the scales by the rule (absmax / level, minimum and step, E8M0 power of
   two, E4M3 × FP32, row RMS), which also gives the divisor ``d`` (``u = (x − offset)/d``) or the
   multiplier (``u = x·d``) of each group,
3. maps the elements ``u`` to codes and packs them at the element's width,

and decodes ``x̂ = table[code] · s (+ offset)`` in float32. Each step has a numpy reference and a
numba kernel (:mod:`mmquant.kernels.formats`, bit-exact; chosen by :func:`mmquant.kernels.resolve`,
so ``MMQUANT_KERNELS=numpy`` runs the reference without importing numba).

The families that use it (each states only its parameters): ``int`` (absmax or min/max,
:mod:`.integer`), ``fp`` (:mod:`.minifloat`), ``mxfp4/6/8``, ``mxint8`` and ``nvfp4``
(:mod:`.block`), ``nf4`` (:mod:`.nonuniform`), ``compander``, ``lloydmax``, ``uniform`` and
``datacompander`` (:mod:`.compander`). :meth:`BlockFormat.static` gives the *static groups* of a
weight matrix (scales fixed from the original weights) that GPTQ quantizes on
(``gptq:base=nvfp4``, :mod:`mmquant.weightonly.gptq`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.formats.elements import ElementMap
from mmquant.kernels import load as load_kernels
from mmquant.layout import Layout
from mmquant.packing import pack, packed_nbytes, unpack

__all__ = [
    "BlockFormat",
    "StaticGroups",
    "group_view",
    "ungroup",
    "as_rows",
    "row_shape",
    "group_size",
    "group_grid",
    "kernels",
]


# ---------------------------------------------------------------------------------------------
# Grouping along the last axis
# ---------------------------------------------------------------------------------------------
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


def as_rows(x: np.ndarray, group: int) -> tuple[np.ndarray, int]:
    """``x`` as a C-contiguous ``(rows, n)`` array and the group length ``g`` along its rows.

    ``group = −1`` (per tensor) gives one row holding the whole tensor; ``0`` gives ``g = n``.
    """
    rows, n = row_shape(x.shape, group)
    return np.ascontiguousarray(x.reshape(rows, n)), group_size(n, group)


def kernels() -> Any:
    """The numba kernels module :mod:`mmquant.kernels.formats`, or ``None`` for the numpy reference.

    Decided by :func:`mmquant.kernels.resolve` (``MMQUANT_KERNELS``; numba when installed); the
    kernels are bit-exact with the numpy reference.
    """
    return load_kernels("formats")


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BlockFormat:
    """A scaled scalar format as data: element map, scale rule and group.

    Attributes
    ----------
    elements : ElementMap
        How a scaled value becomes a code (:mod:`mmquant.formats.elements`).
    scale : ScaleRule
        How the scales are computed, stored and read back (:mod:`mmquant.formats.scales`).
    group : int
        Group length along the last axis (``g ≥ 1``), ``0`` per row, ``-1`` per tensor.
    name : str
        Family name in range errors (``"int decodes to float32: ..."``).
    spec : str
        Spec string in precision errors.
    """

    elements: ElementMap
    scale: Any
    group: int
    name: str = "block format"
    spec: str = ""

    @property
    def bits(self) -> int:
        """Packed bits per entry."""
        return int(self.elements.bits)

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """Packed codes (``bits`` per entry) and the scale rule's side arrays for ``shape``."""
        side = self.scale.side(*group_grid(shape, self.group))
        return Layout(packed_nbytes(math.prod(shape), self.bits), side)

    def _kernels(self, dtype: np.dtype) -> Any:
        return kernels() if dtype in self.elements.kernel_dtypes() else None

    def encode_codes(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
        """Unpacked uint8 codes (C order, ``x.size``), the side arrays, and the kernels used."""
        x2, g = as_rows(x, self.group)
        work = self.scale.work
        k = self._kernels(x2.dtype if work is None else np.dtype(work))
        side, d, off, mul = self.scale.fit(x2, g, k, self)
        xw = x2 if work is None else np.ascontiguousarray(x2, work)
        if k is not None:
            return self.elements.kernel_codes(k, xw, g, d, off, mul), side, k
        blocks, n = group_view(xw, g)
        if mul:
            u = blocks * d[..., None]
        elif off is not None:
            u = blocks - off[..., None]
            u /= d[..., None]
        else:
            u = blocks / d[..., None]
        codes = self.elements.codes(u)
        return ungroup(codes, n, x2.shape).reshape(-1), side, None

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Packed codes (``uint8``) and side arrays of ``x`` (finite float32/float64)."""
        codes, side, k = self.encode_codes(x)
        return _pack(k, codes, self.bits), side

    def decode(
        self,
        packed: np.ndarray,
        side: Any,
        shape: tuple[int, ...],
        table: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 ``table[code]·s (+ offset)`` of shape ``shape`` (a layout-checked record).

        ``table`` replaces the element map's table (a codebook stored in the record).
        """
        k = kernels()
        codes = _unpack(k, packed, self.bits, math.prod(shape))
        return self.decode_codes(codes, side, shape, table, k)

    def decode_codes(
        self,
        codes: np.ndarray,
        side: Any,
        shape: tuple[int, ...],
        table: np.ndarray | None = None,
        k: Any = False,
    ) -> np.ndarray:
        """As :meth:`decode`, from unpacked uint8 codes (``k=False``: resolve the backend)."""
        if k is False:
            k = kernels()
        rows, n = row_shape(shape, self.group)
        g = group_size(n, self.group)
        s, off = self.scale.scales(side)
        tab = self.elements.table if table is None else np.asarray(table, np.float32)
        if k is not None:
            return k.decode_table(codes, tab, s, g, n, off).reshape(shape)
        blocks, _ = group_view(np.asarray(codes).reshape(rows, n), g)
        vals = tab[blocks]
        vals *= s[..., None]
        if off is not None:
            vals += off[..., None]
        return ungroup(vals, n, (rows, n)).reshape(shape)

    # -- precision check shared by the float-scale rules ----------------------------------------
    def rebuild(self, xr: np.ndarray, g: int, s: np.ndarray, m: np.ndarray | None = None):
        """float64 reconstruction of rows ``xr`` with per-group scales ``s`` (and offsets ``m``).

        The reference the scale rules' precision checks compare (:mod:`mmquant.formats.limits`):
        ``u = (x − m)/s`` (``s = 0`` divides by 1), the element map's codes, ``table[c]·s + m``.
        """
        s = s.reshape(xr.shape[0], -1)
        blocks, n = group_view(xr, g)
        u = blocks - m.reshape(s.shape)[..., None] if m is not None else blocks
        u = u / np.where(s > 0, s, 1.0)[..., None]
        vals = self.elements.table[self.elements.codes(u)].astype(np.float64) * s[..., None]
        if m is not None:
            vals = vals + m.reshape(s.shape)[..., None]
        return ungroup(vals, n, xr.shape)

    # -- static groups (GPTQ on a block format) -------------------------------------------------
    def static(self, w: np.ndarray) -> StaticGroups:
        """Scales of a 2-D weight matrix ``w`` fixed by the rule, and the per-entry scales they give.

        The stored side arrays are exactly those :meth:`encode` writes for ``w``; any codes
        quantized with :meth:`StaticGroups.quantize` then form a valid record of this format.
        """
        if w.ndim != 2:
            raise ValueError(f"static groups need a 2-D matrix, got shape {w.shape}")
        x2, g = as_rows(w, self.group)
        k = self._kernels(x2.dtype)
        side = self.scale.fit(x2, g, k, self)[0]
        s, off = self.scale.scales(side)
        n = x2.shape[1]

        def per_entry(a: np.ndarray) -> np.ndarray:
            return np.repeat(a, g, axis=1)[:, :n].reshape(w.shape)

        return StaticGroups(self, side, per_entry(s), None if off is None else per_entry(off))


#: Widths whose numpy (un)packing is whole bytes or shifts of whole arrays: faster than the
#: kernel's loop (same bytes; the kernels take the others).
_NUMPY_UNPACK = (1, 2, 4, 8)


def _pack(k: Any, codes: np.ndarray, bits: int) -> np.ndarray:
    return k.pack(codes, bits) if k is not None and bits != 8 else pack(codes, bits)


def _unpack(k: Any, packed: np.ndarray, bits: int, entries: int) -> np.ndarray:
    if k is not None and bits not in _NUMPY_UNPACK:
        return k.unpack(packed, bits, entries)
    return unpack(packed, bits, entries)


@dataclass(frozen=True, eq=False)
class StaticGroups:
    """Scales fixed once from the original weights; columns quantized onto the format's grid.

    Attributes
    ----------
    format : BlockFormat
    side : dict of str to numpy.ndarray
        The stored scale arrays (as :meth:`BlockFormat.encode` writes them).
    scale, offset : numpy.ndarray
        ``(a, n)`` float32 scale (and offset) of every entry, as the decoder reads them.
    """

    format: BlockFormat
    side: dict[str, np.ndarray]
    scale: np.ndarray
    offset: np.ndarray | None

    def quantize(self, j: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes (uint8) and decoded values (float64) of column ``j``'s targets ``t`` (length ``a``).

        The values are the decoder's, ``fl32(table[c]·s) (+ offset)``, so that error feedback sees
        exactly what the record decodes to.
        """
        el = self.format.elements
        s = self.scale[:, j]
        u = np.asarray(t, np.float64).copy()
        if self.offset is not None:
            u -= self.offset[:, j]
        u /= np.where(s > 0, s, 1.0)
        c = el.codes(u)
        v = el.table[c] * s
        if self.offset is not None:
            v += self.offset[:, j]
        return c, v.astype(np.float64)
