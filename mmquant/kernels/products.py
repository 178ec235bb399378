"""Numba kernels of the products from the codes (:mod:`mmquant.products`), bit-exact with the
numpy reference :mod:`mmquant.products.reference` (its docstring defines the accumulation order).

* :func:`block_product` -- fused unpack, look-up and accumulation of a block-format record times
  float32 activations, from the row-tiled layout (:mod:`mmquant.products.tiles`): one SIMD lane
  per row, so each row's group sum keeps the reference's order; 4-bit codes through the 16-entry
  product tables in SIMD registers, byte codes of integer and minifloat tables decoded
  arithmetically in SIMD registers (:mod:`mmquant.kernels.simd`, AVX-512 or AVX2; one
  activation: a whole tile per call, :mod:`mmquant.kernels.simd_tiles`; the tile loops:
  :mod:`mmquant.kernels.products_simd`), other tables one look-up per code; group scales
  laid out with the tile in half precision where that is exact, else float32 (or, on request,
  ``uint8`` indices into a table of ≤ 256), widened in registers; the scale applied once per
  group; tiles of rows in parallel (``prange``).
* :func:`lattice_dot` -- the block-ordered float64 inner products of decoded lattice blocks with
  rotated activations, rows in parallel.

Importing this module compiles nothing; the first call compiles (cached on disk when a cache
folder is writable: :func:`mmquant.kernels.numba_cache`). Raises ImportError without numba.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np

from mmquant.kernels import product_options, products_simd
from mmquant.kernels.products_simd import half_row, store
from mmquant.kernels.simd import TB, TILE, simd_width

__all__ = [
    "block_product",
    "gemv_plan",
    "few_threads",
    "SERIAL_BELOW",
    "activation_sums",
    "lattice_dot",
    "simd_width",
    "TILE",
    "TB",
]

_opts = product_options(parallel=True)
_helper = product_options(inline=True)
# The kernels built on mmquant.kernels.simd / simd_tiles live in products_simd: after editing
# those modules, bump products_simd.SIMD_REVISION (numba's cache keys a kernel on its own file).


@numba.njit(**_helper)
def _nib_values(words, j, mode, table, base, vals):  # pragma: no cover - compiled
    """``vals[r]`` = the value of row ``r``'s 4-bit code in column ``j``: ``c + base`` (mode 0)
    or ``table[c]`` (mode 1). ``words``: the tile's codes as 32-bit words (the pair layout of
    :mod:`mmquant.products.tiles`: row ``16q + l`` in bits ``16·(j mod 2) + 4q`` of word
    ``16·(j div 2) + l``)."""
    w = words[(j >> 1) * 16 : (j >> 1) * 16 + 16]  # a slice: LLVM then sees no aliasing
    sh = np.uint32((j & 1) * 16)
    m = np.uint32(15)
    for l in range(16):
        wl = w[l] >> sh
        for q in range(4):
            c = (wl >> np.uint32(4 * q)) & m
            if mode == 0:
                vals[16 * q + l] = np.float32(np.int32(c)) + base
            else:
                vals[16 * q + l] = table[c]


@numba.njit(**_helper)
def _nib(words, c0, ncols, x, x0, mode, table, base, acc, vals):  # pragma: no cover - compiled
    """4-bit codes from column ``c0``: each column decoded into ``vals``, then accumulated
    (measured 6× faster than shifting inside the accumulation loop)."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        _nib_values(words, c0 + jj, mode, table, base, vals)
        for r in range(TILE):
            acc[r] += vals[r] * xj


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
def _decode_group(codes, words, c0, ncols, mode, table, base, buf):  # pragma: no cover
    """``buf[jj, r] = table[code(r, jj)]`` for the columns of one group of a tile (``mode`` and
    ``base`` as in :func:`_tiles_loop`: arithmetic where the table allows it)."""
    for jj in range(ncols):
        w = buf[jj]
        if mode < 2:  # c0: the first column; the codes as 32-bit words (_nib_values)
            _nib_values(words, c0 + jj, mode, table, base, w)
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
def _tiles_loop(codes, mode, table, base, sc, g, x, u, vsum, out):  # pragma: no cover - compiled
    """Plain-numba tiles (``mode``: 0 4-bit int, 1 4-bit table, 2 byte int, 3 byte table,
    4 signed byte; ``base`` is the integer base of modes 0 and 2, the step of mode 4).

    For a batch with groups of at most :data:`BUFFERED` columns, each group of a tile is decoded
    once into a float32 buffer, then dotted with every activation."""
    tiles = codes.shape[0]
    b, n = x.shape
    scale, sidx, stable, has_off = sc[0], sc[1], sc[2], sc[4]
    ng = sidx.shape[1]
    indexed, compact = sidx.shape[2] > 0, sc[5].shape[2] > 0
    per = 1 if mode < 2 else TILE  # 4-bit codes: c0 is a column; else a byte offset
    buffered = b > 1 and g <= BUFFERED
    for ti in numba.prange(tiles):
        acc = np.empty(TILE, np.float32)
        sbuf, obuf = np.empty(TILE, np.float32), np.empty(TILE, np.float32)
        buf = np.empty((g if buffered else 1, TILE), np.float32)
        y = np.zeros((b, TILE))
        cf = codes[ti]
        cw = cf.view(np.uint32)  # 4-bit codes: the pair layout's words
        vals = np.empty(TILE, np.float32)
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if buffered:
                _decode_group(cf, cw, j0 * per, gl, mode, table, base, buf)
            if indexed:
                _plain_scales(sidx, stable, ti, k, sbuf)
            elif compact:
                half_row(sc[5][ti, k], sc[7], sbuf)
            else:
                sbuf[:] = scale[ti, k]
            orow = (
                half_row(sc[6][ti, k], np.float32(1.0), obuf)
                if compact and has_off
                else sc[3][ti, k]
            )
            for t in range(b):
                if buffered:
                    _dot_group(buf, gl, x[t], j0, acc)
                elif mode < 2:
                    _nib(cw, j0, gl, x[t], j0, mode, table, base, acc, vals)
                elif mode == 2:
                    _byte_int(cf, j0 * per, gl, x[t], j0, base, acc)
                elif mode == 4:
                    _byte_signed(cf, j0 * per, gl, x[t], j0, base, acc)
                else:
                    _byte_table(cf, j0 * per, gl, x[t], j0, table, acc)
                _add_group(y, acc, sbuf, orow, has_off, k, t, u, vsum)
        store(out, y, ti)


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
    with few_threads(tv.rows * tv.n * b):
        return _block_product(tv, x, u, vsum, simd, b)


def _block_product(tv, x, u, vsum, simd, b):
    out = np.empty((tv.rows, b))
    x = np.ascontiguousarray(x, np.float32)
    u = np.ascontiguousarray(u, np.float64)
    vs = np.ascontiguousarray(vsum if vsum is not None else np.zeros(u.shape), np.float64)
    sc = products_simd.sides(tv)
    kind, fi, ii = _simd_kind(tv)
    if simd and kind >= 0:
        p = (fi[0], fi[1], ii[0], ii[1], ii[2])  # the byte decoders' parameters
        mode = (2 if tv.has_offset else 1) + (2 if bool(np.all(u == 1.0)) else 0)  # u ≡ 1: +2
        if b == 1:
            products_simd.gemv(simd, tv, kind, p, x[0], u[0], vs[0], mode, out)
        else:
            products_simd.batched(simd, tv, kind, p, x, u, vs, mode, out)
    else:
        mode = (0 if tv.base is not None else 1) + (0 if tv.nibbles else 2)
        base = np.float32(tv.base if tv.base is not None else 0.0)
        if mode == 3 and tv.step is not None:
            mode, base = 4, np.float32(tv.step)
        _tiles_loop(tv.codes, mode, tv.table, base, sc, tv.group, x, u, vs, out)
    return out


def gemv_plan(tv, simd: int | None = None):
    """:func:`block_product` of one activation with unit group scales, bound to a tile view.

    Returns ``f(x) -> (out, bad)``: ``x`` a contiguous float32 ``(n,)`` activation, ``out`` the
    ``(rows, 1)`` float64 product (the same numbers as :func:`block_product`) and ``bad`` how
    many of its entries are not finite; or ``None`` where the tile view has no SIMD inner loop.
    Everything but ``x`` is prepared here, once per weight: a call is one allocation and one
    kernel dispatch, the group sums of affine records included. That matters for a GEMV after
    other work has flushed the caches, where each numpy call on the way costs microseconds.
    """
    if simd is None:
        simd = simd_width()
    kind, fi, ii = _simd_kind(tv)
    if not simd or kind < 0:
        return None
    p = (fi[0], fi[1], ii[0], ii[1], ii[2])
    ng = tv.scale_index.shape[1]
    run = products_simd.gemv_plan(simd, tv, kind, p, np.ones(ng), (2 if tv.has_offset else 1) + 2)
    rows, sums, zeros = tv.rows, tv.has_offset, np.zeros(ng)
    small = rows * tv.n < SERIAL_BELOW  # the calling thread alone (few_threads)

    def f(x: np.ndarray) -> tuple[np.ndarray, int]:
        out, vs = np.empty((rows, 1)), np.empty(ng) if sums else zeros
        if not small:
            return out, run(x, vs, sums, out)
        with few_threads(0):
            return out, run(x, vs, sums, out)

    return f


#: Products with fewer code × activation terms than this run on the calling thread alone: waking
#: the other threads costs more than they save (measured 2 cores, a 256×4096 int4 GEMV from the
#: codes against numpy's float32 one: 0.74× on two threads, 1.33× on one; 1024×4096: 1.49×,
#: 1.60×; 4096×4096: 3.44×, 2.20×).
SERIAL_BELOW = 1 << 22


@contextlib.contextmanager
def few_threads(terms: int) -> Iterator[None]:
    """One numba thread for the calls inside when ``terms`` < :data:`SERIAL_BELOW` (restored
    after), the threads as they are otherwise."""
    nt = numba.get_num_threads()
    if terms >= SERIAL_BELOW or nt == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(nt)


@numba.njit(**product_options())
def _asums(x, g, out):  # pragma: no cover - compiled
    b, n = x.shape
    for t in range(b):
        for k in range(out.shape[1]):
            s = np.float32(0.0)
            for j in range(k * g, min(n, k * g + g)):
                s += x[t, j]
            out[t, k] = s


def activation_sums(x: np.ndarray, g: int) -> np.ndarray:
    """Numba version of :func:`mmquant.products.reference.activation_sums` (the same float32
    additions in the same order; the reference's zero padding adds ``+0`` to sums that are never
    ``-0``, which changes nothing)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty((x.shape[0], -(-x.shape[1] // g)), np.float32)
    _asums(x, g, out)
    return out.astype(np.float64)


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
