"""Numba kernels of the products from the codes (:mod:`mmquant.products`), bit-exact with the
numpy reference :mod:`mmquant.products.reference` (its docstring defines the accumulation order).

* :func:`block_product` -- fused unpack, look-up and accumulation of a block-format record times
  float32 activations, from the row-tiled layout (:mod:`mmquant.products.tiles`): one SIMD lane
  per row, so each row's group sum keeps the reference's order; 4-bit codes through the 16-entry
  product tables in SIMD registers, byte codes of integer and minifloat tables decoded
  arithmetically in SIMD registers (:mod:`mmquant.kernels.simd`, AVX-512 or AVX2), other tables
  one look-up per code; float32 group scales laid out with the tile (or, on request, ``uint8``
  indices into a table of ≤ 256); the scale applied once per group; tiles of
  rows in parallel (``prange``).
* :func:`lattice_dot` -- the block-ordered float64 inner products of decoded lattice blocks with
  rotated activations, rows in parallel.

Importing this module compiles nothing; the first call compiles (cached on disk when a cache
folder is writable: :func:`mmquant.kernels.numba_cache`). Raises ImportError without numba.
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import product_options
from mmquant.kernels.simd import (
    TB,
    TILE,
    bytes_group8,
    bytes_group8m,
    bytes_group8mx4,
    bytes_group8x4,
    bytes_group16,
    bytes_group16m,
    bytes_group16mx4,
    bytes_group16x4,
    lut4_group8,
    lut4_group8x4,
    lut4_group16,
    lut4_group16x4,
    scale_lookup8,
    scale_lookup16,
    simd_width,
)
from mmquant.kernels.simd_tiles import gemv_tile8, gemv_tile16

__all__ = ["block_product", "lattice_dot", "simd_width", "TILE", "TB"]

_opts = product_options(parallel=True)
_helper = product_options(inline=True)
#: numba's disk cache keys a kernel on the contents of *this* file only: bump this whenever
#: :mod:`mmquant.kernels.simd` or :mod:`mmquant.kernels.simd_tiles` changes, so that the cached
#: tile kernels are compiled again.
SIMD_REVISION = 7


@numba.njit(**_helper)
def _nib_column(codes, j, vals):  # pragma: no cover - compiled
    """``vals[r] = code(r, j)`` for the ``TILE`` rows of a tile (the pair layout of
    :mod:`mmquant.products.tiles`: row ``16q + l`` in byte ``64·(j div 2) + 4l + 2·(j mod 2) +
    q div 2``, low nibble for even ``q``)."""
    base = (j >> 1) * 64 + 2 * (j & 1)
    c = codes[base : base + 64]  # a slice: LLVM then sees no aliasing
    for l in range(16):
        b0 = c[4 * l]
        b1 = c[4 * l + 1]
        vals[l] = b0 & 15
        vals[16 + l] = b0 >> 4
        vals[32 + l] = b1 & 15
        vals[48 + l] = b1 >> 4


@numba.njit(**_helper)
def _nib_int(codes, c0, ncols, x, x0, base, acc):  # pragma: no cover - compiled
    """4-bit codes ``c + base`` from column ``c0``: decoded arithmetically (no look-up)."""
    for r in range(TILE):
        acc[r] = 0.0
    vals = np.empty(TILE, np.uint8)
    for jj in range(ncols):
        xj = x[x0 + jj]
        _nib_column(codes, c0 + jj, vals)
        for r in range(TILE):
            acc[r] += (np.float32(np.int32(vals[r])) + base) * xj


@numba.njit(**_helper)
def _nib_table(codes, c0, ncols, x, x0, table, acc):  # pragma: no cover - compiled
    """4-bit codes from column ``c0`` through their table, one look-up per code."""
    for r in range(TILE):
        acc[r] = 0.0
    vals = np.empty(TILE, np.uint8)
    for jj in range(ncols):
        xj = x[x0 + jj]
        _nib_column(codes, c0 + jj, vals)
        for r in range(TILE):
            acc[r] += table[vals[r]] * xj


@numba.njit(**_helper)
def _byte_int(codes, c0, ncols, x, x0, base, acc):  # pragma: no cover - compiled
    """One code per byte, ``c + base``."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        c = codes[c0 + jj * TILE : c0 + jj * TILE + TILE]
        for r in range(TILE):
            acc[r] += (np.float32(np.int32(c[r])) + base) * xj


@numba.njit(**_helper)
def _byte_signed(codes, c0, ncols, x, x0, step, acc):  # pragma: no cover - compiled
    """One code per byte, ``int8(c) · step`` (``step`` a power of two: exact)."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        c = codes[c0 + jj * TILE : c0 + jj * TILE + TILE]
        for r in range(TILE):
            acc[r] += (np.float32(np.int32(np.int8(c[r]))) * step) * xj


@numba.njit(**_helper)
def _byte_table(codes, c0, ncols, x, x0, table, acc):  # pragma: no cover - compiled
    """One code per byte through a 256-entry table."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        c = codes[c0 + jj * TILE : c0 + jj * TILE + TILE]
        for r in range(TILE):
            acc[r] += table[c[r]] * xj


@numba.njit(**_helper)
def _add_group(y, acc, srow, orow, has_off, k, t, u, vsum):  # pragma: no cover - compiled
    """Step 3 of the contract for one group of a tile (its ``TILE`` scales ``srow`` and
    offsets ``orow``) and one activation."""
    ut = u[t, k]
    if has_off:
        vt = vsum[t, k]
        for r in range(TILE):
            y[t, r] += (np.float64(srow[r]) * ut) * np.float64(acc[r]) + (
                np.float64(orow[r]) * ut
            ) * vt
    else:
        for r in range(TILE):
            y[t, r] += (np.float64(srow[r]) * ut) * np.float64(acc[r])


@numba.njit(**_helper)
def _plain_scales(sidx, stable, ti, k, sbuf):  # pragma: no cover - compiled
    """``sbuf[r] = stable[sidx[ti, k, r]]`` one at a time (the plain-numba path)."""
    si = sidx[ti, k]
    for r in range(TILE):
        sbuf[r] = stable[si[r]]


@numba.njit(**_helper)
def _store(out, y, ti):  # pragma: no cover - compiled
    rows, b = out.shape
    for r in range(TILE):
        i = ti * TILE + r
        if i < rows:
            for t in range(b):
                out[i, t] = y[t, r] + 0.0


@numba.njit(**_helper)
def _decode_group(codes, c0, ncols, mode, table, base, buf):  # pragma: no cover - compiled
    """``buf[jj, r] = table[code(r, jj)]`` for the columns of one group of a tile (``mode`` and
    ``base`` as in :func:`_tiles_loop`: arithmetic where the table allows it)."""
    vals = np.empty(TILE, np.uint8)
    for jj in range(ncols):
        w = buf[jj]
        if mode < 2:  # c0: the first column (the pair layout)
            _nib_column(codes, c0 + jj, vals)
            if mode == 0:
                for r in range(TILE):
                    w[r] = np.float32(np.int32(vals[r])) + base
            else:
                for r in range(TILE):
                    w[r] = table[vals[r]]
        else:
            c = codes[c0 + jj * TILE : c0 + jj * TILE + TILE]
            if mode == 2:
                for r in range(TILE):
                    w[r] = np.float32(np.int32(c[r])) + base
            elif mode == 4:
                for r in range(TILE):
                    w[r] = np.float32(np.int32(np.int8(c[r]))) * base
            else:
                for r in range(TILE):
                    w[r] = table[c[r]]


@numba.njit(**_helper)
def _dot_group(buf, ncols, x, x0, acc):  # pragma: no cover - compiled
    """``acc[r] = Σ_jj fl32(buf[jj, r] · x[x0 + jj])`` in increasing ``jj`` from ``+0.0``."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        w = buf[jj]
        for r in range(TILE):
            acc[r] += w[r] * xj


#: Largest group decoded once into a buffer for a batch (``BUFFERED · TILE`` float32, in cache).
BUFFERED = 256


@numba.njit(**_opts)
def _tiles_loop(codes, mode, table, base, scale, sidx, stable, offset, has_off, g, x, u, vsum, out):
    """Plain-numba tiles (``mode``: 0 4-bit int, 1 4-bit table, 2 byte int, 3 byte table,
    4 signed byte; ``base`` is the integer base of modes 0 and 2, the step of mode 4).

    For a batch with groups of at most :data:`BUFFERED` columns, each group of a tile is decoded
    once into a float32 buffer, then dotted with every activation."""
    tiles = codes.shape[0]
    b, n = x.shape
    ng = sidx.shape[1]
    indexed = sidx.shape[2] > 0
    per = 1 if mode < 2 else TILE  # 4-bit codes: c0 is a column; else a byte offset
    buffered = b > 1 and g <= BUFFERED
    for ti in numba.prange(tiles):
        acc = np.empty(TILE, np.float32)
        sbuf = np.empty(TILE, np.float32)
        buf = np.empty((g if buffered else 1, TILE), np.float32)
        y = np.zeros((b, TILE))
        cf = codes[ti]
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if buffered:
                _decode_group(cf, j0 * per, gl, mode, table, base, buf)
            if indexed:
                _plain_scales(sidx, stable, ti, k, sbuf)
            else:
                sbuf[:] = scale[ti, k]
            for t in range(b):
                if buffered:
                    _dot_group(buf, gl, x[t], j0, acc)
                elif mode == 0:
                    _nib_int(cf, j0 * per, gl, x[t], j0, base, acc)
                elif mode == 1:
                    _nib_table(cf, j0 * per, gl, x[t], j0, table, acc)
                elif mode == 2:
                    _byte_int(cf, j0 * per, gl, x[t], j0, base, acc)
                elif mode == 4:
                    _byte_signed(cf, j0 * per, gl, x[t], j0, base, acc)
                else:
                    _byte_table(cf, j0 * per, gl, x[t], j0, table, acc)
                _add_group(y, acc, sbuf, offset[ti, k], has_off, k, t, u, vsum)
        _store(out, y, ti)


@numba.njit(**_opts)
def _tiles_simd16(
    codes, kind, table, fi, ii, sc, parts, g, n, xg, u, vsum, unit, out
):  # pragma: no cover
    """Tiles with the AVX-512 inner loops (:mod:`mmquant.kernels.simd`): ``kind`` 0 4-bit
    look-ups in ``table``, 1 integer bytes, 2 minifloat bytes (``fi``, ``ii``: their float and
    integer parameters); ``sc`` = (scale, sidx, stable, offset, has_off), ``parts`` registers of
    indexed scales; the activations group-major (:func:`_group_major`: ``xg[k·bp + t]`` is group
    ``k`` of activation ``t``), ``u`` and ``vsum`` padded to ``bp`` rows. The group sums are
    scaled (and offset) and added in the inner loop's registers."""
    scale, sidx, stable, offset, has_off = sc
    b = out.shape[1]
    ng = sidx.shape[1]
    bp = xg.shape[0] // ng
    p = (fi[0], fi[1], ii[0], ii[1], ii[2])  # the byte decoders' parameters
    mode = (2 if has_off else 1) + (2 if unit else 0)  # unit: u ≡ 1
    indexed = sidx.shape[2] > 0
    for ti in numba.prange(codes.shape[0]):
        acc = np.empty((TB, TILE), np.float32)
        sbuf = np.empty(TILE, np.float32)
        y = np.zeros((bp, TILE))
        cf = codes[ti]
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if indexed:
                scale_lookup16(sidx[ti, k], stable, parts, sbuf)
                srow = sbuf
            else:
                srow = scale[ti, k]  # a view: no copy
            for t0 in range(0, b, TB):
                e = (acc, srow, u, k, t0, y, mode, offset[ti, k], vsum)
                h = (cf, j0, gl, xg, k * bp + t0, 0)
                w = (cf, j0 * TILE, gl, xg, k * bp + t0, 0)
                if b == 1:
                    if kind == 0:
                        lut4_group16(*h, table, *e)
                    elif kind == 1:
                        bytes_group16(*w, *p, *e)
                    else:
                        bytes_group16m(*w, *p, *e)
                elif kind == 0:
                    lut4_group16x4(*h, table, *e)
                elif kind == 1:
                    bytes_group16x4(*w, *p, *e)
                else:
                    bytes_group16mx4(*w, *p, *e)
        _store(out, y, ti)


@numba.njit(**_opts)
def _tiles_simd8(
    codes, kind, table, fi, ii, sc, parts, g, n, xg, u, vsum, unit, out
):  # pragma: no cover
    """As :func:`_tiles_simd16` with the AVX2 inner loops."""
    scale, sidx, stable, offset, has_off = sc
    b = out.shape[1]
    ng = sidx.shape[1]
    bp = xg.shape[0] // ng
    p = (fi[0], fi[1], ii[0], ii[1], ii[2])  # the byte decoders' parameters
    mode = (2 if has_off else 1) + (2 if unit else 0)  # unit: u ≡ 1
    indexed = sidx.shape[2] > 0
    for ti in numba.prange(codes.shape[0]):
        acc = np.empty((TB, TILE), np.float32)
        sbuf = np.empty(TILE, np.float32)
        y = np.zeros((bp, TILE))
        cf = codes[ti]
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if indexed:
                scale_lookup8(sidx[ti, k], stable, parts, sbuf)
                srow = sbuf
            else:
                srow = scale[ti, k]  # a view: no copy
            for t0 in range(0, b, TB):
                e = (acc, srow, u, k, t0, y, mode, offset[ti, k], vsum)
                h = (cf, j0, gl, xg, k * bp + t0, 0)
                w = (cf, j0 * TILE, gl, xg, k * bp + t0, 0)
                if b == 1:
                    if kind == 0:
                        lut4_group8(*h, table, *e)
                    elif kind == 1:
                        bytes_group8(*w, *p, *e)
                    else:
                        bytes_group8m(*w, *p, *e)
                elif kind == 0:
                    lut4_group8x4(*h, table, *e)
                elif kind == 1:
                    bytes_group8x4(*w, *p, *e)
                else:
                    bytes_group8mx4(*w, *p, *e)
        _store(out, y, ti)


@numba.njit(**_opts)
def _gemv16(
    codes, kind, table, fi, ii, scale, offset, g, n, x, u, vsum, mode, out
):  # pragma: no cover
    """One activation, float32 scales: a whole tile per call of the AVX-512 loop
    (:mod:`mmquant.kernels.simd_tiles`)."""
    for ti in numba.prange(codes.shape[0]):
        y = np.empty((1, TILE))
        gemv_tile16(
            codes[ti],
            x,
            n,
            g,
            kind,
            fi[0],
            fi[1],
            ii[0],
            ii[1],
            ii[2],
            table,
            scale[ti],
            offset[ti],
            u,
            vsum,
            mode,
            y[0],
        )
        _store(out, y, ti)


@numba.njit(**_opts)
def _gemv8(
    codes, kind, table, fi, ii, scale, offset, g, n, x, u, vsum, mode, out
):  # pragma: no cover
    """As :func:`_gemv16` with the AVX2 loop."""
    for ti in numba.prange(codes.shape[0]):
        y = np.empty((1, TILE))
        gemv_tile8(
            codes[ti],
            x,
            n,
            g,
            kind,
            fi[0],
            fi[1],
            ii[0],
            ii[1],
            ii[2],
            table,
            scale[ti],
            offset[ti],
            u,
            vsum,
            mode,
            y[0],
        )
        _store(out, y, ti)


def _group_major(x: np.ndarray, g: int, ng: int) -> np.ndarray:
    """``(b, n)`` activations → ``(ng·bp, g)``: row ``k·bp + t`` is group ``k`` of activation
    ``t`` (zero-padded; ``bp`` is 1, or ``b`` rounded up to a multiple of ``TB``), so that the
    activations of one group lie together in memory."""
    b, n = x.shape
    bp = 1 if b == 1 else -(-b // TB) * TB
    xp = np.zeros((bp, ng * g), np.float32)
    xp[:b, :n] = x
    return np.ascontiguousarray(xp.reshape(bp, ng, g).transpose(1, 0, 2)).reshape(ng * bp, g)


def block_product(
    tv, x: np.ndarray, u: np.ndarray, vsum: np.ndarray | None, simd: int | None = None
) -> np.ndarray:
    """Numba version of :func:`mmquant.products.reference.block_product` from the tiled layout.

    Parameters
    ----------
    tv : TileView
        :func:`mmquant.products.tiles.tile_view` of the record's block view.
    x, u, vsum : numpy.ndarray
        As in the reference (``vsum`` may be ``None`` without offsets).
    simd : int, optional
        Look-up variant for 4-bit codes: 16 (AVX-512), 8 (AVX2) or 0 (plain loops); default
        :func:`simd_width`. Every variant gives the same numbers.
    """
    if simd is None:
        simd = simd_width()
    if simd > simd_width():
        raise ValueError(f"simd={simd} is not available on this CPU (widest: {simd_width()})")
    b = x.shape[0]
    out = np.empty((tv.rows, b))
    x = np.ascontiguousarray(x, np.float32)
    u = np.ascontiguousarray(u, np.float64)
    vs = np.ascontiguousarray(vsum if vsum is not None else np.zeros(u.shape), np.float64)
    sc = (tv.scale, tv.scale_index, tv.scale_table, tv.offset, tv.has_offset)
    kind, fi, ii = _simd_kind(tv)
    if simd and kind >= 0 and b == 1 and not tv.indexed:
        mode = (2 if tv.has_offset else 1) + (2 if bool(np.all(u == 1.0)) else 0)
        kernel = _gemv16 if simd == 16 else _gemv8
        sc, of = tv.scale, tv.offset
        kernel(
            tv.codes, kind, tv.table, fi, ii, sc, of, tv.group, tv.n, x[0], u[0], vs[0], mode, out
        )
    elif simd and kind >= 0:
        ng = tv.scale_index.shape[1]
        xg = _group_major(x, tv.group, ng)
        bp = xg.shape[0] // ng
        up = np.ones((bp, ng))
        up[:b] = u
        vp = np.zeros((bp, ng))
        vp[:b] = vs
        kernel = _tiles_simd16 if simd == 16 else _tiles_simd8
        parts = -(-tv.scale_count // simd)
        unit = bool(np.all(u == 1.0))
        kernel(tv.codes, kind, tv.table, fi, ii, sc, parts, tv.group, tv.n, xg, up, vp, unit, out)
    else:
        mode = (0 if tv.base is not None else 1) + (0 if tv.nibbles else 2)
        base = np.float32(tv.base if tv.base is not None else 0.0)
        if mode == 3 and tv.step is not None:
            mode, base = 4, np.float32(tv.step)
        _tiles_loop(tv.codes, mode, tv.table, base, *sc[:4], sc[4], tv.group, x, u, vs, out)
    return out


def _simd_kind(tv) -> tuple[int, tuple[float, float], tuple[int, int, int]]:
    """``(kind, (fa, fb), (ia, ib, ic))`` of the SIMD inner loop for a tile view (kind −1:
    none; the parameters of :mod:`mmquant.kernels.simd`'s byte decoders)."""
    f32 = np.float32
    if tv.nibbles:
        return 0, (f32(0), f32(0)), (0, 0, 0)
    if tv.base is not None:  # c + base, unsigned
        return 1, (f32(tv.base), f32(1)), (0, 0, 0)
    if tv.step is not None:  # int8(c) · step
        return 1, (f32(0), f32(tv.step)), (128, 0, 0)
    if tv.mini is not None:
        sb, mask, shift, mult = tv.mini
        e = int(np.log2(mult))  # 0 ≤ e ≤ 126 (minifloat_fields)
        return 2, (f32(2.0 ** (e - 126)), f32(1)), (sb, mask, shift)
    return -1, (f32(0), f32(0)), (0, 0, 0)


@numba.njit(**_opts)
def _ldot(zh, v, out):  # pragma: no cover - compiled
    r, n8 = zh.shape
    b = v.shape[0]
    for i in numba.prange(r):
        for t in range(b):
            y = 0.0
            for k in range(0, n8, 8):
                s = 0.0
                for lane in range(8):
                    s += zh[i, k + lane] * v[t, k + lane]
                y += s
            out[i, t] = y


def lattice_dot(zh: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Numba version of :func:`mmquant.products.reference.lattice_dot`."""
    out = np.empty((zh.shape[0], v.shape[0]))
    _ldot(np.ascontiguousarray(zh, np.float64), np.ascontiguousarray(v, np.float64), out)
    return out
