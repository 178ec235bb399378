"""Numba kernel of the products from nested-lattice codes (:mod:`mmquant.products.lattice`).

:func:`lattice_product` multiplies the row-tiled integer codewords of a Voronoi-code record
(``TILE`` rows per tile, one SIMD lane per row: for every column the codewords of the tile's rows
are adjacent) by float32 rotated activations. For every 8-block it forms the float32 block sum
``Σ_l fl32(c_l · v_l)`` (``l = 0..7`` in order, from ``+0.0``) in one lane per row, then adds
``scale · sum`` (the block's float32 scale as float64) to the row's float64 total (blocks in increasing order from ``+0.0``):
the accumulation order of the numpy reference :func:`mmquant.products.lattice.reference_dot`,
bit for bit (no multiply-add is fused). One activation is read straight from the codewords; for a batch,
each block of a tile is converted to float32 once (into a buffer in L1) and dotted with every
activation. Tiles of rows run in parallel (``prange``).

The module imports nothing from the rest of the package; the first call compiles (cached on disk
when a cache folder is writable: :func:`mmquant.kernels.numba_cache`).
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import product_options

__all__ = ["TILE", "lattice_product", "fwht_rows"]

#: Rows per tile (must equal :data:`mmquant.products.lattice.TILE`).
TILE = 64

_opts = product_options(parallel=True)
_helper = product_options(inline=True)


@numba.njit(**_helper)
def _add_direct(c, sc, vt, j0, yt):  # pragma: no cover - compiled
    """``yt[r] += sc[r] · Σ_{l<8} fl32(c[j0 + l, r] · vt[j0 + l])``: one block of a tile, the
    block sum from ``+0.0`` in increasing ``l`` (written out, so that LLVM keeps the eight
    activations in registers and vectorises over the rows ``r``)."""
    v0, v1, v2, v3 = vt[j0], vt[j0 + 1], vt[j0 + 2], vt[j0 + 3]
    v4, v5, v6, v7 = vt[j0 + 4], vt[j0 + 5], vt[j0 + 6], vt[j0 + 7]
    c0, c1, c2, c3 = c[j0], c[j0 + 1], c[j0 + 2], c[j0 + 3]
    c4, c5, c6, c7 = c[j0 + 4], c[j0 + 5], c[j0 + 6], c[j0 + 7]
    for r in range(TILE):
        s = np.float32(0.0)
        s += np.float32(c0[r]) * v0
        s += np.float32(c1[r]) * v1
        s += np.float32(c2[r]) * v2
        s += np.float32(c3[r]) * v3
        s += np.float32(c4[r]) * v4
        s += np.float32(c5[r]) * v5
        s += np.float32(c6[r]) * v6
        s += np.float32(c7[r]) * v7
        yt[r] += np.float64(sc[r]) * np.float64(s)


@numba.njit(**_helper)
def _block_floats(c, j0, buf):  # pragma: no cover - compiled
    """The block's codewords as float32 (exact): ``buf[l, r] = c[j0 + l, r]``."""
    for lane in range(8):
        col = c[j0 + lane]
        w = buf[lane]
        for r in range(TILE):
            w[r] = np.float32(col[r])


@numba.njit(**_helper)
def _add_block(buf, sc, vt, j0, yt):  # pragma: no cover - compiled
    """``yt[r] += sc[r] · Σ_{l<8} fl32(buf[l, r] · vt[j0 + l])`` (the block sum from ``+0.0``,
    in increasing ``l``; written out so that LLVM keeps the eight activations in registers and
    vectorises over the rows)."""
    v0, v1, v2, v3 = vt[j0], vt[j0 + 1], vt[j0 + 2], vt[j0 + 3]
    v4, v5, v6, v7 = vt[j0 + 4], vt[j0 + 5], vt[j0 + 6], vt[j0 + 7]
    for r in range(TILE):
        s = np.float32(0.0)
        s += buf[0, r] * v0
        s += buf[1, r] * v1
        s += buf[2, r] * v2
        s += buf[3, r] * v3
        s += buf[4, r] * v4
        s += buf[5, r] * v5
        s += buf[6, r] * v6
        s += buf[7, r] * v7
        yt[r] += np.float64(sc[r]) * np.float64(s)


@numba.njit(**_opts)
def _tiles(codes, bscale, v, out):  # pragma: no cover - compiled
    """``out[i, t]`` for every row ``i`` and activation ``t`` (module docstring)."""
    tiles, n8 = codes.shape[0], codes.shape[1]
    nblk = n8 // 8
    b = v.shape[0]
    rows = out.shape[0]
    for ti in numba.prange(tiles):
        y = np.zeros((b, TILE))
        buf = np.empty((8, TILE), np.float32)
        c = codes[ti]
        bs = bscale[ti]
        for kb in range(nblk):
            if b == 1:
                _add_direct(c, bs[kb], v[0], kb * 8, y[0])
            else:
                _block_floats(c, kb * 8, buf)
                for t in range(b):
                    _add_block(buf, bs[kb], v[t], kb * 8, y[t])
        for r in range(TILE):
            i = ti * TILE + r
            if i < rows:
                for t in range(b):
                    out[i, t] = y[t, r] + 0.0


@numba.njit(**product_options())
def _fwht(y):  # pragma: no cover - compiled
    n = y.shape[1]
    for t in range(y.shape[0]):
        row = y[t]
        h = 1
        while h < n:
            for i0 in range(0, n, 2 * h):
                for i in range(i0, i0 + h):
                    a = row[i]
                    b = row[i + h]
                    row[i] = a + b
                    row[i + h] = a - b
            h *= 2


def fwht_rows(y: np.ndarray) -> None:
    """In place: the unnormalised fast Walsh–Hadamard transform of every row of the float64
    C-contiguous ``(b, n)`` array ``y`` (``n`` a power of two), bit for bit
    :func:`mmquant.rotations.fwht` (the same butterflies ``a + b``, ``a − b``: each output is
    one IEEE operation on the same two inputs, whatever the order of the loops)."""
    if y.ndim != 2 or y.dtype != np.float64 or not y.flags.c_contiguous:
        raise ValueError("fwht_rows needs a C-contiguous float64 (b, n) array")
    n = y.shape[1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    _fwht(y)


def lattice_product(codes: np.ndarray, bscale: np.ndarray, v: np.ndarray, rows: int) -> np.ndarray:
    """``(rows, b)`` float64 block-ordered products of tiled codewords with activations.

    Parameters
    ----------
    codes : numpy.ndarray
        int8 or int16 ``(tiles, n8, TILE)`` codewords (column ``j`` of tile ``ti``, lane ``r``
        for row ``ti·TILE + r``; rows past the end zero).
    bscale : numpy.ndarray
        float32 ``(tiles, n8 // 8, TILE)`` scale of every block (``β · unit``, 0 past the end).
    v : numpy.ndarray
        float32 ``(b, n8)`` rotated, zero-padded activations.
    rows : int
        Rows of the matrix (at most ``tiles · TILE``).

    Raises ``ValueError`` when the shapes do not fit together (nothing is read out of bounds).
    """
    if codes.ndim != 3 or codes.dtype not in (np.int8, np.int16):
        raise ValueError(f"tiles must be int8 or int16 (tiles, n8, {TILE}), got {codes.shape}")
    tiles, n8 = codes.shape[0], codes.shape[1]
    if (
        codes.shape[2] != TILE
        or n8 % 8
        or bscale.shape != (tiles, n8 // 8, TILE)
        or v.ndim != 2
        or v.shape[1] != n8
        or not 0 <= rows <= tiles * TILE
    ):
        raise ValueError(
            f"tiles {codes.shape}, block scales {bscale.shape}, activations {v.shape} and "
            f"{rows} rows do not fit together"
        )
    out = np.empty((rows, v.shape[0]))
    bs = np.ascontiguousarray(bscale, np.float32)
    _tiles(np.ascontiguousarray(codes), bs, np.ascontiguousarray(v, np.float32), out)
    return out
