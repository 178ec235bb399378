"""Row-tiled layout of block-format codes, the layout the numba product kernels read.

A GEMV from 4-bit codes is bound by how fast the codes are turned into float products, not by
memory. The kernels (:mod:`mmquant.kernels.products`, :mod:`mmquant.kernels.products_simd`)
therefore work on :data:`TILE` rows at a time, one SIMD lane per row: for every column ``j`` of
a tile the codes of its rows are adjacent, so one vector load brings the codes of all rows for
``x_j``, and the group sums of all rows are
accumulated in independent lanes in the order of the contract
(:mod:`mmquant.products.reference`: each group summed in increasing column order) -- no reduction
across lanes, no reordering of a float sum.

Layout of :attr:`TileView.codes` (``uint8``, shape ``(tiles, n · bytes_per_column)``):

* 4-bit codes, by pairs of columns: columns ``2p`` and ``2p + 1`` of tile ``ti`` are the 64
  bytes at ``64·p``, read as 16 little-endian 32-bit words ``w[l]``; bits ``4q .. 4q + 3`` of
  ``w[l]`` hold the code of row ``ti·TILE + 16·(q mod 4) + l`` in column ``2p + q div 4``
  (``q = 0 .. 7``). A word shifted right by ``16·(j mod 2) + 4q`` has the code of row
  ``16q + l``, column ``j`` in its low 4 bits, which are all a 16-lane variable permute reads:
  the codes of a column become look-up indices with shifts only, no widening shuffle. An odd
  last column is padded with code 0 (the same number of bytes as the record's packed codes, up
  to that padding);
* other widths: one code per byte, column ``j`` at ``j·TILE``, byte ``r`` for row
  ``ti·TILE + r``.

Rows past the end of the matrix (the last tile) hold code 0 and scale 0; their outputs are
dropped. Scales are read once per group and row, converted once per weight and laid out with
the tile (``scale[tile, group]`` is the group's ``TILE`` scales): in half precision where that
is exact (below), else float32; the kernels apply them to the group sums without a look-up
(half-precision ones widened in registers). On request (``index_scales=True``), a record
with at most 256 distinct group scales (MX E8M0 exponents, NVFP4 E4M3 block scales × the tensor
scale) keeps them as one ``uint8`` index per group and row into a 256-entry float32 table
(:attr:`TileView.scale_index`): a quarter of the bytes, the same values, but a look-up per group
in the kernels (measured one thread, 4096², AVX-512, caches flushed, loaded machine: NVFP4 GEMV
0.62 ms indexed, 0.50 ms float32; MXFP4 0.53 / 0.44), so it is not the default.

Compact scales (``compact=True``, the default): when every group scale is
``fl32(h · unit)`` for a half-precision ``h`` (``unit`` the record's float32 factor: NVFP4's
tensor scale, else 1) and every offset is a half-precision value -- as for the float16 scales
of int, fp, NF4 and the row codebooks, NVFP4's, and MX scales from 2^-24 to 2^15 -- the tile
keeps the uint16 bits of ``h`` (:attr:`TileView.scale16`, :attr:`TileView.offset16`): half the
bytes of float32 scales, and the kernels widen them in registers to the very same float32
values. A 4096² int4 record's tile is then 9.4 MB instead of 10.5 (NVFP4 10.5 instead of 12.6),
which is what a GEMV from memory reads. Records whose scales are not exact in half precision
keep float32 scales.

Codes one per byte decode without a look-up where the table allows: integer tables
(``code + base``, or ``int8(code) · step``), and minifloat tables (:func:`minifloat_fields`:
``bitcast(sign << 31 | magnitude << shift) · mult``, exactly the table's float32 values). Codes
that look up a non-finite table entry (the NaN codes of E4M3/E5M2) are refused here, before any
kernel reads them. The layout is made once per weight with numpy (:func:`tile_view`) and kept
beside the record's view, the way CPU inference engines repack weights for their SIMD kernels;
its arrays start on a 64-byte boundary (:data:`ALIGN`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmquant.packing import unpack
from mmquant.products.records import BlockView

__all__ = [
    "TILE",
    "TileView",
    "tile_view",
    "integer_base",
    "signed_step",
    "minifloat_fields",
    "nibble_codes",
    "ALIGN",
]

#: Rows per tile (one SIMD lane per row; 4 AVX-512 or 8 AVX2 registers of float32 per column).
TILE = 64


@dataclass(frozen=True)
class TileView:
    """A :class:`~mmquant.products.records.BlockView` in the row-tiled layout (module docstring).

    Attributes
    ----------
    codes : numpy.ndarray
        ``uint8`` ``(tiles, 64 · ⌈n/2⌉)`` for 4-bit codes, ``(tiles, n · TILE)`` otherwise.
    nibbles : bool
        Whether the codes are 4-bit (two per byte).
    table : numpy.ndarray
        float32 value of each code; 16 entries for 4-bit codes, 256 otherwise (zero-padded).
    base : float or None
        When every entry of the table is ``code + base`` (integer formats), ``base``: a code
        then decodes arithmetically, without a look-up.
    step : float or None
        When the table is ``int8(code) · step`` (256 entries, ``step`` a power of two: MX INT8),
        ``step``: a code then decodes arithmetically, as a signed byte.
    mini : tuple or None
        :func:`minifloat_fields` of the table (codes wider than 4 bits only), else ``None``.
    scale : numpy.ndarray
        float32 ``(tiles, groups, TILE)``; empty ``(tiles, groups, 0)`` when the scales are
        indexed (:attr:`scale_index`) or compact (:attr:`scale16`).
    scale16 : numpy.ndarray
        ``uint16`` ``(tiles, groups, TILE)`` half-precision bits ``h`` of the compact scales,
        ``S = fl32(h · scale_unit)``; empty ``(tiles, groups, 0)`` otherwise.
    scale_unit : numpy.float32
        The factor of the compact scales (1 unless NVFP4's tensor scale).
    scale_index : numpy.ndarray
        ``uint8`` ``(tiles, groups, TILE)`` indices into :attr:`scale_table` when the record has
        at most 256 distinct scales and no offsets, else empty ``(tiles, groups, 0)``.
    scale_table : numpy.ndarray
        float32 ``(256,)``: the distinct scales (zero-padded).
    scale_count : int
        How many entries of :attr:`scale_table` are used (every index is below it).
    offset : numpy.ndarray
        float32 ``(tiles, groups, TILE)``; empty ``(tiles, groups, 0)`` for formats without
        offsets and for compact ones (:attr:`offset16`).
    offset16 : numpy.ndarray
        ``uint16`` half-precision bits of the offsets of a compact record with offsets; empty
        ``(tiles, groups, 0)`` otherwise.
    has_offset : bool
        Whether the record has offsets (affine INT).
    group, rows, n : int
        As in the block view.
    """

    codes: np.ndarray
    nibbles: bool
    table: np.ndarray
    base: float | None
    step: float | None
    mini: tuple[int, int, int, float] | None
    scale: np.ndarray
    scale16: np.ndarray
    scale_unit: np.float32
    scale_index: np.ndarray
    scale_table: np.ndarray
    scale_count: int
    offset: np.ndarray
    offset16: np.ndarray
    has_offset: bool
    group: int
    rows: int
    n: int

    @property
    def indexed(self) -> bool:
        """Whether the scales are read through :attr:`scale_index`."""
        return self.scale_index.shape[2] > 0

    @property
    def compact(self) -> bool:
        """Whether the scales (and offsets) are kept in half precision (:attr:`scale16`)."""
        return self.scale16.shape[2] > 0

    @property
    def nbytes(self) -> int:
        """Bytes of the codes, scales and offsets that a product reads."""
        arrays = (self.codes, self.scale, self.scale16, self.scale_index, self.offset)
        return sum(a.nbytes for a in (*arrays, self.offset16))

    def scales(self) -> np.ndarray:
        """float32 ``(tiles, groups, TILE)`` scales, whatever the layout."""
        if self.compact:
            return self.scale16.view(np.float16).astype(np.float32) * self.scale_unit
        return self.scale_table[self.scale_index] if self.indexed else self.scale

    def offsets(self) -> np.ndarray | None:
        """float32 ``(tiles, groups, TILE)`` offsets, or ``None`` without offsets."""
        if not self.has_offset:
            return None
        return self.offset16.view(np.float16).astype(np.float32) if self.compact else self.offset


def integer_base(table: np.ndarray) -> float | None:
    """``b`` when ``table[c] == c + b`` for every code ``c`` with an integer ``b``, else ``None``."""
    t = np.asarray(table, np.float64)
    b = float(t[0])
    if b == round(b) and np.array_equal(t, np.arange(t.size) + b):
        return b
    return None


def signed_step(table: np.ndarray) -> float | None:
    """``s`` when ``table[c] == int8(c) · s`` for all 256 codes with ``s`` a power of two."""
    t = np.asarray(table, np.float64)
    if t.size != 256:
        return None
    s = float(t[1])
    if not (s > 0 and np.frexp(s)[0] == 0.5):
        return None
    signed = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64)
    return s if np.array_equal(t, signed * s) else None


def minifloat_fields(table: np.ndarray, width: int) -> tuple[int, int, int, float] | None:
    """``(sign_bit, mask, shift, mult)`` when every finite ``table[c]`` is a minifloat.

    That is ``table[c] == fl32(bitcast_f32(s << 31 | (c & mask) << shift) · mult)`` with
    ``s = (c >> sign_bit) & 1``, ``mask = 2^(width−1) − 1``, ``mult`` a power of two: the code's
    exponent and mantissa fields moved into those of a float32 (subnormals included, as float32
    subnormals), then rebased exactly -- the OCP FP8/FP6 elements (E4M3, E5M2, E2M3, E3M2).
    ``None`` for other tables (and for widths below 2).
    """
    t = np.asarray(table, np.float32)
    if width < 2 or t.size != 2**width:
        return None
    sb, mask = width - 1, 2 ** (width - 1) - 1
    c = np.arange(t.size, dtype=np.uint32)
    ok = np.isfinite(t)
    for mbits in range(0, width - 1):
        shift = 23 - mbits
        raw = (((c >> sb) & 1) << 31 | (c & mask) << shift).view(np.float32)
        if raw[1] == 0 or not (ok[1] and t[1] > 0):
            continue
        mult = float(t[1]) / float(raw[1])
        if not (np.frexp(mult)[0] == 0.5 and 1.0 <= mult <= 2.0**126):
            continue
        with np.errstate(over="ignore"):
            cand = raw * np.float32(mult)
        if np.array_equal(cand[ok], t[ok]):
            return sb, mask, shift, mult
    return None


def _check_codes(table: np.ndarray, codes: np.ndarray) -> None:
    """ValueError if a code looks up a non-finite entry of its table (a NaN/inf code)."""
    bad = ~np.isfinite(table)
    if bad.any() and bad[codes].any():
        raise ValueError(
            "the record's codes are corrupt: a code decodes to a value that is not finite "
            "(a NaN or infinity code of the element format, never written by the encoder)"
        )


def _index_scales(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(indices uint8, table float32[256], count)`` of a scale array with ≤ 256 distinct
    values."""
    if scale.size == 0:
        return None
    sample = np.unique(scale.reshape(-1)[:: max(1, scale.size // 4096)])
    if sample.size > 256:
        return None
    vals, inv = np.unique(scale.reshape(-1).view(np.uint32), return_inverse=True)
    if vals.size > 256:
        return None
    table = np.zeros(256, np.float32)
    table[: vals.size] = vals.view(np.float32)
    return inv.reshape(scale.shape).astype(np.uint8), table, int(vals.size)


def _half_bits(a: np.ndarray, unit: np.float32) -> np.ndarray | None:
    """uint16 half-precision bits ``h`` with ``fl32(h · unit) == a`` bit for bit (float32
    ``a``), or ``None`` where some value has no such ``h``."""
    if not (np.isfinite(unit) and unit > 0):
        return None
    with np.errstate(all="ignore"):
        h = (a.astype(np.float64) / np.float64(unit)).astype(np.float16)
        back = h.astype(np.float32) * unit
    if not np.all(np.isfinite(h)) or not np.array_equal(back.view(np.uint32), a.view(np.uint32)):
        return None
    return h.view(np.uint16)


def _compact(view: BlockView) -> tuple[np.ndarray, np.ndarray | None, np.float32] | None:
    """``(scale bits, offset bits or None, unit)`` of a view whose scales are exact as
    ``fl32(half · unit)`` (the record's unit, or 1) and offsets exact in half precision."""
    for unit in dict.fromkeys((np.float32(view.unit), np.float32(1.0))):
        s16 = _half_bits(view.scale, unit)
        if s16 is not None:
            break
    else:
        return None
    o16 = None if view.offset is None else _half_bits(view.offset, np.float32(1.0))
    if view.offset is not None and o16 is None:
        return None
    return s16, o16, unit


def _tiled(a: np.ndarray, tiles: int) -> np.ndarray:
    """``(rows, ...)`` → ``(tiles, ..., TILE)``, rows past the end zero."""
    pad = np.zeros((tiles * TILE, *a.shape[1:]), a.dtype)
    pad[: a.shape[0]] = a
    return np.moveaxis(pad.reshape(tiles, TILE, *a.shape[1:]), 1, -1)


#: Alignment of the arrays of a tile view, in bytes (a cache line: a 64-byte load of the SIMD
#: kernels never spans two).
ALIGN = 64


def _aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an :data:`ALIGN`-byte boundary."""
    raw = np.empty(a.nbytes + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    out = raw[off : off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _nibble_pairs(ct: np.ndarray) -> np.ndarray:
    """``(tiles, n, TILE)`` 4-bit codes → ``(tiles, 64·⌈n/2⌉)`` bytes, the pair layout of the
    module docstring: byte ``64p + 4l + 2c + qh`` holds row ``16·(2qh) + l`` of column
    ``2p + c`` in its low nibble and row ``16·(2qh + 1) + l`` in its high nibble."""
    tiles, n, _ = ct.shape
    pairs = -(-n // 2)
    pad = np.zeros((tiles, 2 * pairs, TILE), np.uint8)
    pad[:, :n] = ct
    # [tile, p, c, qh, ql, l] -> [tile, p, l, c, qh, ql]
    v = pad.reshape(tiles, pairs, 2, 2, 2, 16).transpose(0, 1, 5, 2, 3, 4)
    return np.ascontiguousarray(v[..., 0] | (v[..., 1] << np.uint8(4))).reshape(tiles, -1)


def nibble_codes(tv: TileView) -> np.ndarray:
    """``(tiles·TILE, n)`` codes of a 4-bit tile view (the inverse of the pair layout)."""
    tiles = tv.codes.shape[0]
    b = tv.codes.reshape(tiles, -1, 16, 2, 2)  # [tile, p, l, c, qh]
    v = np.stack([b & 15, b >> 4], axis=-1)  # [tile, p, l, c, qh, ql]
    ct = v.transpose(0, 1, 3, 4, 5, 2).reshape(tiles, -1, TILE)[:, : tv.n]
    return ct.transpose(0, 2, 1).reshape(tiles * TILE, tv.n)


def tile_view(view: BlockView, index_scales: bool = False, compact: bool = True) -> TileView:
    """The row-tiled layout of a block view (module docstring); numpy, once per weight.

    Parameters
    ----------
    view : BlockView
    index_scales : bool
        Keep the scales as ``uint8`` indices into a table when the record has at most 256
        distinct ones and no offsets (module docstring; first choice when asked for).
    compact : bool
        Keep the scales and offsets in half precision where that is exact (module docstring);
        float32 otherwise.
    """
    rows, n, w = view.rows, view.n, view.width
    tiles = -(-rows // TILE)
    codes = unpack(view.codes, w, rows * n).reshape(rows, n)
    _check_codes(view.table, codes)
    ct = np.ascontiguousarray(_tiled(codes, tiles))  # (tiles, n, TILE)
    nibbles = w == 4
    if nibbles:
        ct = _nibble_pairs(ct)
    table = np.zeros(16 if nibbles else 256, np.float32)
    table[: view.table.size] = view.table
    has_offset = view.offset is not None
    ng = view.scale.shape[1]
    none8, none16 = np.zeros((tiles, ng, 0), np.uint8), np.zeros((tiles, ng, 0), np.uint16)
    scale = offset = np.zeros((tiles, ng, 0), np.float32)  # empty: not this layout
    scale16, offset16, unit = none16, none16, np.float32(1.0)
    sidx, stable, count = none8, np.zeros(256, np.float32), 0
    indexed = None if has_offset or not index_scales else _index_scales(view.scale)
    half = None if indexed is not None or not compact else _compact(view)
    if indexed is not None:
        sidx, stable, count = np.ascontiguousarray(_tiled(indexed[0], tiles)), *indexed[1:]
    elif half is not None:
        scale16, unit = _aligned(_tiled(half[0], tiles)), half[2]
        if half[1] is not None:
            offset16 = _aligned(_tiled(half[1], tiles))
    else:
        scale = _aligned(_tiled(view.scale, tiles).astype(np.float32))
    if has_offset and half is None:
        offset = _aligned(_tiled(view.offset, tiles).astype(np.float32))
    return TileView(
        codes=_aligned(ct.reshape(tiles, -1)),
        nibbles=nibbles,
        table=table,
        base=integer_base(view.table),
        step=signed_step(view.table),
        mini=None if nibbles else minifloat_fields(view.table, w),
        scale=scale,
        scale16=scale16,
        scale_unit=unit,
        scale_index=sidx,
        scale_table=stable,
        scale_count=count,
        offset=offset,
        offset16=offset16,
        has_offset=has_offset,
        group=view.group,
        rows=rows,
        n=n,
    )
