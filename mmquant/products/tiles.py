"""Row-tiled layout of block-format codes, the layout the numba product kernels read.

A GEMV from 4-bit codes is bound by how fast the codes are turned into float products, not by
memory. The kernels (:mod:`mmquant.kernels.products`) therefore work on :data:`TILE` rows at a
time, one SIMD lane per row: for every column ``j`` of a tile the codes of its rows are adjacent,
so one vector load brings the codes of all rows for ``x_j``, and the group sums of all rows are
accumulated in independent lanes in the order of the contract
(:mod:`mmquant.products.reference`: each group summed in increasing column order) -- no reduction
across lanes, no reordering of a float sum.

Layout of :attr:`TileView.codes` (``uint8``, shape ``(tiles, n · bytes_per_column)``):

* 4-bit codes: column ``j`` of tile ``ti`` is the ``H = TILE/2`` bytes at ``j·H``; byte ``r``
  holds the code of row ``ti·TILE + r`` in its low nibble and of row ``ti·TILE + H + r`` in its
  high nibble (the same number of bytes as the record's packed codes);
* other widths: one code per byte, column ``j`` at ``j·TILE``, byte ``r`` for row
  ``ti·TILE + r``.

Rows past the end of the matrix (the last tile) hold code 0 and scale 0; their outputs are
dropped. The layout is made once per weight with numpy (:func:`tile_view`) and kept beside the
record's view, the way CPU inference engines repack weights for their SIMD kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmquant.packing import unpack
from mmquant.products.records import BlockView

__all__ = ["TILE", "TileView", "tile_view", "integer_base", "signed_step"]

#: Rows per tile (one SIMD lane per row; 4 AVX-512 or 8 AVX2 registers of float32 per column).
TILE = 64


@dataclass(frozen=True)
class TileView:
    """A :class:`~mmquant.products.records.BlockView` in the row-tiled layout (module docstring).

    Attributes
    ----------
    codes : numpy.ndarray
        ``uint8`` ``(tiles, n · H)`` for 4-bit codes, ``(tiles, n · TILE)`` otherwise.
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
    scale, offset : numpy.ndarray
        float32 ``(tiles, groups, TILE)``; ``offset`` is all zeros for formats without one.
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
    scale: np.ndarray
    offset: np.ndarray
    has_offset: bool
    group: int
    rows: int
    n: int


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


def _tiled(a: np.ndarray, tiles: int) -> np.ndarray:
    """``(rows, ...)`` → ``(tiles, ..., TILE)``, rows past the end zero."""
    pad = np.zeros((tiles * TILE, *a.shape[1:]), a.dtype)
    pad[: a.shape[0]] = a
    return np.moveaxis(pad.reshape(tiles, TILE, *a.shape[1:]), 1, -1)


def tile_view(view: BlockView) -> TileView:
    """The row-tiled layout of a block view (module docstring); numpy, once per weight."""
    rows, n, w = view.rows, view.n, view.width
    tiles = -(-rows // TILE)
    codes = unpack(view.codes, w, rows * n).reshape(rows, n)
    ct = np.ascontiguousarray(_tiled(codes, tiles))  # (tiles, n, TILE)
    nibbles = w == 4
    if nibbles:
        h = TILE // 2
        ct = ct[:, :, :h] | (ct[:, :, h:] << np.uint8(4))
    table = np.zeros(16 if nibbles else 256, np.float32)
    table[: view.table.size] = view.table
    scale = np.ascontiguousarray(_tiled(view.scale, tiles), np.float32)
    has_offset = view.offset is not None
    off = view.offset if view.offset is not None else np.zeros_like(view.scale)
    offset = np.ascontiguousarray(_tiled(off, tiles), np.float32)
    return TileView(
        codes=np.ascontiguousarray(ct).reshape(tiles, -1),
        nibbles=nibbles,
        table=table,
        base=integer_base(view.table),
        step=signed_step(view.table),
        scale=scale,
        offset=offset,
        has_offset=has_offset,
        group=view.group,
        rows=rows,
        n=n,
    )
