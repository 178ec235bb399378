"""The tile loops of the block products with SIMD inner loops (:mod:`mmquant.kernels.simd`,
:mod:`mmquant.kernels.simd_tiles`), called by :func:`mmquant.kernels.products.block_product`.

One kernel per inner loop: numba inlines an intrinsic at each of its call sites, and a tile loop
holding several of them (one per kind of code) was measured 13 % slower than a loop holding one
(4-bit codes, batch 16, 4096², one thread: 5.4 against 4.7 ms), so each kind of code and each
register width has its own loop here, chosen in Python.

* ``_gemv{16,8}`` -- one activation: a whole tile per call (:mod:`mmquant.kernels.simd_tiles`),
  two tiles per call for 4-bit codes (eight chains of float32 additions instead of four: measured
  one thread, 4096², hot, the same loop around each: int4 0.39 → 0.33 ms, NVFP4 0.42 → 0.38;
  INT8 unchanged, so byte codes keep one); indexed scales are looked up once per tile into a
  float32 buffer first. ``_gemv{16,8}h``: the same for compact (half-precision) scales.
* ``_batch_{lut,int,mini}{16,8}`` -- activations :data:`TB` at a time, one call per group.

The activations of the batched loops are group-major (:func:`group_major`), ``u`` and ``vsum``
padded to its ``bp`` rows; ``mode`` is that of :func:`mmquant.kernels.simd._finish` (1 to 4).
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import product_options
from mmquant.kernels.simd import (
    TB,
    TILE,
    bytes_group8mx4,
    bytes_group8x4,
    bytes_group16mx4,
    bytes_group16x4,
    lut4_group8x4,
    lut4_group16x4,
    scale_lookup8,
    scale_lookup16,
)
from mmquant.kernels.simd_tiles import (
    gemv_2tiles8,
    gemv_2tiles16,
    gemv_tile8,
    gemv_tile16,
    half_tile,
)

__all__ = [
    "half_row",
    "sides",
    "offset_row",
    "gemv",
    "gemv_plan",
    "batched",
    "group_major",
    "store",
    "group_sums",
    "nonfinite",
]

_opts = product_options(parallel=True)
_helper = product_options(inline=True)
#: numba's disk cache keys a kernel on the contents of *this* file only: bump this whenever
#: :mod:`mmquant.kernels.simd` or :mod:`mmquant.kernels.simd_tiles` changes, so that the cached
#: tile kernels are compiled again.
SIMD_REVISION = 16


@numba.njit(**_helper)
def store(out, y, ti):  # pragma: no cover - compiled
    """Rows of tile ``ti`` from its sums ``y`` ``(b, TILE)`` (``+ 0.0``: no ``-0``)."""
    rows, b = out.shape
    for r in range(TILE):
        i = ti * TILE + r
        if i < rows:
            for t in range(b):
                out[i, t] = y[t, r] + 0.0


@numba.njit(**_helper)
def half_row(bits, unit, out):  # pragma: no cover - compiled
    """``out[r] = fl32(half(bits[r]) · unit)``: IEEE half-precision bits (finite: checked when
    the tile view was made) widened exactly, then one float32 multiply, as the SIMD loops do in
    registers (:mod:`mmquant.kernels.simd_tiles`); for the plain-numba loops, which may run
    where the CPU has no half-precision conversion. Returns ``out``."""
    for r in range(out.shape[0]):
        h = np.int32(bits[r])
        e, m = (h >> 10) & 31, h & 1023
        if e == 0:  # zero or subnormal: m · 2^-24
            v = np.float32(m) * np.float32(2.0**-24)
        else:  # (1024 + m) · 2^(e - 25)
            v = np.float32(1024 + m) * np.float32(2.0 ** (e - 25))
        out[r] = (-v if h & 0x8000 else v) * unit
    return out


def sides(tv) -> tuple:
    """The scale arrays of a tile view as the kernels take them: ``(scale, scale_index,
    scale_table, offset, has_offset, scale16, offset16, scale_unit)``."""
    return (
        tv.scale, tv.scale_index, tv.scale_table, tv.offset, tv.has_offset, tv.scale16,
        tv.offset16, tv.scale_unit,
    )  # fmt: skip


@numba.njit(**_helper)
def group_sums(x, g, out):  # pragma: no cover - compiled
    """``out[k]`` = the float32 sum of group ``k`` of the activation ``x`` (increasing column
    order from ``+0.0``, as :func:`mmquant.products.reference.activation_sums`), as float64."""
    n = x.shape[0]
    for k in range(out.shape[0]):
        s = np.float32(0.0)
        for j in range(k * g, min(n, k * g + g)):
            s += x[j]
        out[k] = s


@numba.njit(**_helper)
def nonfinite(out):  # pragma: no cover - compiled
    """How many entries of ``out`` are NaN or infinite."""
    bad = 0
    for v in out.ravel():
        if not np.isfinite(v):
            bad += 1
    return bad


@numba.njit(**_opts)
def _gemv16(
    codes, kind, table, p, sc, parts, g, n, x, u, vsum, mode, sums, out
):  # pragma: no cover
    scale, sidx, stable, offset = sc[0], sc[1], sc[2], sc[3]
    tiles, ng = codes.shape[0], sidx.shape[1]
    indexed = sidx.shape[2] > 0
    if sums:
        group_sums(x, g, vsum)
    for tp in numba.prange((tiles + 1) // 2):  # 4-bit codes: two tiles at a time
        t0 = 2 * tp
        nt = min(2, tiles - t0)
        y = np.empty((2, TILE))
        sb = np.empty((2 if indexed else 0, ng, TILE), np.float32)
        if indexed:
            for t in range(nt):
                for k in range(ng):
                    scale_lookup16(sidx[t0 + t, k], stable, parts, sb[t, k])
        srows = sb if indexed else scale[t0 : t0 + 2]
        if nt == 2 and kind == 0:
            gemv_2tiles16(
                codes[t0 : t0 + 2], x, n, g, kind, p[0], p[1], p[2], p[3], p[4], table, srows,
                offset[t0 : t0 + 2], sc[7], u, vsum, mode, y,
            )  # fmt: skip
        else:
            for t in range(nt):
                gemv_tile16(
                    codes[t0 + t : t0 + t + 1], x, n, g, kind, p[0], p[1], p[2], p[3], p[4],
                    table, srows[t : t + 1], offset[t0 + t : t0 + t + 1], sc[7], u, vsum, mode,
                    y[t : t + 1],
                )  # fmt: skip
        for t in range(nt):
            store(out, y[t : t + 1], t0 + t)
    return nonfinite(out)


@numba.njit(**_opts)
def _gemv16h(
    codes, kind, table, p, sc, parts, g, n, x, u, vsum, mode, sums, out
):  # pragma: no cover
    """:func:`_gemv16` of a compact tile view (half-precision scales and offsets)."""
    tiles = codes.shape[0]
    if sums:
        group_sums(x, g, vsum)
    for tp in numba.prange((tiles + 1) // 2):
        t0 = 2 * tp
        nt = min(2, tiles - t0)
        y = np.empty((2, TILE))
        if nt == 2 and kind == 0:
            gemv_2tiles16(
                codes[t0 : t0 + 2], x, n, g, kind, p[0], p[1], p[2], p[3], p[4], table,
                sc[5][t0 : t0 + 2], sc[6][t0 : t0 + 2], sc[7], u, vsum, mode, y,
            )  # fmt: skip
        else:
            for t in range(nt):
                gemv_tile16(
                    codes[t0 + t : t0 + t + 1], x, n, g, kind, p[0], p[1], p[2], p[3], p[4],
                    table, sc[5][t0 + t : t0 + t + 1], sc[6][t0 + t : t0 + t + 1], sc[7], u,
                    vsum, mode, y[t : t + 1],
                )  # fmt: skip
        for t in range(nt):
            store(out, y[t : t + 1], t0 + t)
    return nonfinite(out)


@numba.njit(**_opts)
def _gemv8(codes, kind, table, p, sc, parts, g, n, x, u, vsum, mode, sums, out):  # pragma: no cover
    scale, sidx, stable, offset = sc[0], sc[1], sc[2], sc[3]
    tiles, ng = codes.shape[0], sidx.shape[1]
    indexed = sidx.shape[2] > 0
    if sums:
        group_sums(x, g, vsum)
    for tp in numba.prange((tiles + 1) // 2):  # 4-bit codes: two tiles at a time
        t0 = 2 * tp
        nt = min(2, tiles - t0)
        y = np.empty((2, TILE))
        sb = np.empty((2 if indexed else 0, ng, TILE), np.float32)
        if indexed:
            for t in range(nt):
                for k in range(ng):
                    scale_lookup8(sidx[t0 + t, k], stable, parts, sb[t, k])
        srows = sb if indexed else scale[t0 : t0 + 2]
        if nt == 2 and kind == 0:
            gemv_2tiles8(
                codes[t0 : t0 + 2], x, n, g, kind, p[0], p[1], p[2], p[3], p[4], table, srows,
                offset[t0 : t0 + 2], sc[7], u, vsum, mode, y,
            )  # fmt: skip
        else:
            for t in range(nt):
                gemv_tile8(
                    codes[t0 + t : t0 + t + 1], x, n, g, kind, p[0], p[1], p[2], p[3], p[4],
                    table, srows[t : t + 1], offset[t0 + t : t0 + t + 1], sc[7], u, vsum, mode,
                    y[t : t + 1],
                )  # fmt: skip
        for t in range(nt):
            store(out, y[t : t + 1], t0 + t)
    return nonfinite(out)


@numba.njit(**_opts)
def _gemv8h(
    codes, kind, table, p, sc, parts, g, n, x, u, vsum, mode, sums, out
):  # pragma: no cover
    """:func:`_gemv8` of a compact tile view (half-precision scales and offsets)."""
    tiles = codes.shape[0]
    if sums:
        group_sums(x, g, vsum)
    for tp in numba.prange((tiles + 1) // 2):
        t0 = 2 * tp
        nt = min(2, tiles - t0)
        y = np.empty((2, TILE))
        if nt == 2 and kind == 0:
            gemv_2tiles8(
                codes[t0 : t0 + 2], x, n, g, kind, p[0], p[1], p[2], p[3], p[4], table,
                sc[5][t0 : t0 + 2], sc[6][t0 : t0 + 2], sc[7], u, vsum, mode, y,
            )  # fmt: skip
        else:
            for t in range(nt):
                gemv_tile8(
                    codes[t0 + t : t0 + t + 1], x, n, g, kind, p[0], p[1], p[2], p[3], p[4],
                    table, sc[5][t0 + t : t0 + t + 1], sc[6][t0 + t : t0 + t + 1], sc[7], u,
                    vsum, mode, y[t : t + 1],
                )  # fmt: skip
        for t in range(nt):
            store(out, y[t : t + 1], t0 + t)
    return nonfinite(out)


@numba.njit(**_helper)
def _srow16(sc, parts, ti, k, sbuf):  # pragma: no cover - compiled
    if sc[1].shape[2] > 0:  # indexed
        scale_lookup16(sc[1][ti, k], sc[2], parts, sbuf)
        return sbuf
    if sc[5].shape[2] > 0:  # compact
        half_tile(sc[5][ti, k], sc[7], sbuf)
        return sbuf
    return sc[0][ti, k]  # a view: no copy


@numba.njit(**_helper)
def _srow8(sc, parts, ti, k, sbuf):  # pragma: no cover - compiled
    if sc[1].shape[2] > 0:
        scale_lookup8(sc[1][ti, k], sc[2], parts, sbuf)
        return sbuf
    if sc[5].shape[2] > 0:
        half_tile(sc[5][ti, k], sc[7], sbuf)
        return sbuf
    return sc[0][ti, k]


@numba.njit(**_helper)
def offset_row(sc, ti, k, obuf):  # pragma: no cover - compiled
    """float32 offsets of group ``k`` of tile ``ti`` (empty without offsets; compact ones
    widened into ``obuf``, with the SIMD loops' :func:`half_tile`)."""
    if sc[6].shape[2] > 0:
        half_tile(sc[6][ti, k], np.float32(1.0), obuf)
        return obuf
    return sc[3][ti, k]


# The batched loops: the same body around one intrinsic each (see the module docstring).


@numba.njit(**_opts)
def _batch_lut16(codes, table, p, sc, parts, g, n, xg, u, vsum, mode, out):  # pragma: no cover
    ng, b = sc[1].shape[1], out.shape[1]
    bp = xg.shape[0] // ng
    for ti in numba.prange(codes.shape[0]):
        acc, bufs = np.empty((TB, TILE), np.float32), np.empty((2, TILE), np.float32)
        y = np.zeros((bp, TILE))
        for k in range(ng):
            j0 = k * g
            srow, orow = _srow16(sc, parts, ti, k, bufs[0]), offset_row(sc, ti, k, bufs[1])
            for t0 in range(0, b, TB):
                lut4_group16x4(
                    codes[ti], j0, min(g, n - j0), xg, k * bp + t0, 0, table, acc, srow, u, k,
                    t0, y, mode, orow, vsum,
                )  # fmt: skip
        store(out, y, ti)


@numba.njit(**_opts)
def _batch_lut8(codes, table, p, sc, parts, g, n, xg, u, vsum, mode, out):  # pragma: no cover
    ng, b = sc[1].shape[1], out.shape[1]
    bp = xg.shape[0] // ng
    for ti in numba.prange(codes.shape[0]):
        acc, bufs = np.empty((TB, TILE), np.float32), np.empty((2, TILE), np.float32)
        y = np.zeros((bp, TILE))
        for k in range(ng):
            j0 = k * g
            srow, orow = _srow8(sc, parts, ti, k, bufs[0]), offset_row(sc, ti, k, bufs[1])
            for t0 in range(0, b, TB):
                lut4_group8x4(
                    codes[ti], j0, min(g, n - j0), xg, k * bp + t0, 0, table, acc, srow, u, k,
                    t0, y, mode, orow, vsum,
                )  # fmt: skip
        store(out, y, ti)


@numba.njit(**_opts)
def _batch_int16(codes, table, p, sc, parts, g, n, xg, u, vsum, mode, out):  # pragma: no cover
    ng, b = sc[1].shape[1], out.shape[1]
    bp = xg.shape[0] // ng
    for ti in numba.prange(codes.shape[0]):
        acc, bufs = np.empty((TB, TILE), np.float32), np.empty((2, TILE), np.float32)
        y = np.zeros((bp, TILE))
        for k in range(ng):
            j0 = k * g
            srow, orow = _srow16(sc, parts, ti, k, bufs[0]), offset_row(sc, ti, k, bufs[1])
            for t0 in range(0, b, TB):
                bytes_group16x4(
                    codes[ti], j0 * TILE, min(g, n - j0), xg, k * bp + t0, 0, p[0], p[1], p[2],
                    p[3], p[4], acc, srow, u, k, t0, y, mode, orow, vsum,
                )  # fmt: skip
        store(out, y, ti)


@numba.njit(**_opts)
def _batch_int8(codes, table, p, sc, parts, g, n, xg, u, vsum, mode, out):  # pragma: no cover
    ng, b = sc[1].shape[1], out.shape[1]
    bp = xg.shape[0] // ng
    for ti in numba.prange(codes.shape[0]):
        acc, bufs = np.empty((TB, TILE), np.float32), np.empty((2, TILE), np.float32)
        y = np.zeros((bp, TILE))
        for k in range(ng):
            j0 = k * g
            srow, orow = _srow8(sc, parts, ti, k, bufs[0]), offset_row(sc, ti, k, bufs[1])
            for t0 in range(0, b, TB):
                bytes_group8x4(
                    codes[ti], j0 * TILE, min(g, n - j0), xg, k * bp + t0, 0, p[0], p[1], p[2],
                    p[3], p[4], acc, srow, u, k, t0, y, mode, orow, vsum,
                )  # fmt: skip
        store(out, y, ti)


@numba.njit(**_opts)
def _batch_mini16(codes, table, p, sc, parts, g, n, xg, u, vsum, mode, out):  # pragma: no cover
    ng, b = sc[1].shape[1], out.shape[1]
    bp = xg.shape[0] // ng
    for ti in numba.prange(codes.shape[0]):
        acc, bufs = np.empty((TB, TILE), np.float32), np.empty((2, TILE), np.float32)
        y = np.zeros((bp, TILE))
        for k in range(ng):
            j0 = k * g
            srow, orow = _srow16(sc, parts, ti, k, bufs[0]), offset_row(sc, ti, k, bufs[1])
            for t0 in range(0, b, TB):
                bytes_group16mx4(
                    codes[ti], j0 * TILE, min(g, n - j0), xg, k * bp + t0, 0, p[0], p[1], p[2],
                    p[3], p[4], acc, srow, u, k, t0, y, mode, orow, vsum,
                )  # fmt: skip
        store(out, y, ti)


@numba.njit(**_opts)
def _batch_mini8(codes, table, p, sc, parts, g, n, xg, u, vsum, mode, out):  # pragma: no cover
    ng, b = sc[1].shape[1], out.shape[1]
    bp = xg.shape[0] // ng
    for ti in numba.prange(codes.shape[0]):
        acc, bufs = np.empty((TB, TILE), np.float32), np.empty((2, TILE), np.float32)
        y = np.zeros((bp, TILE))
        for k in range(ng):
            j0 = k * g
            srow, orow = _srow8(sc, parts, ti, k, bufs[0]), offset_row(sc, ti, k, bufs[1])
            for t0 in range(0, b, TB):
                bytes_group8mx4(
                    codes[ti], j0 * TILE, min(g, n - j0), xg, k * bp + t0, 0, p[0], p[1], p[2],
                    p[3], p[4], acc, srow, u, k, t0, y, mode, orow, vsum,
                )  # fmt: skip
        store(out, y, ti)


#: The batched loop of each (register width, kind of code).
_BATCHED = {
    (16, 0): _batch_lut16,
    (16, 1): _batch_int16,
    (16, 2): _batch_mini16,
    (8, 0): _batch_lut8,
    (8, 1): _batch_int8,
    (8, 2): _batch_mini8,
}


def group_major(x: np.ndarray, g: int, ng: int) -> np.ndarray:
    """``(b, n)`` activations → ``(ng·bp, g)``: row ``k·bp + t`` is group ``k`` of activation
    ``t`` (zero-padded; ``bp`` is ``b`` rounded up to a multiple of ``TB``), so that the
    activations of one group lie together in memory."""
    b, n = x.shape
    bp = -(-b // TB) * TB
    xp = np.zeros((bp, ng * g), np.float32)
    xp[:b, :n] = x
    return np.ascontiguousarray(xp.reshape(bp, ng, g).transpose(1, 0, 2)).reshape(ng * bp, g)


def gemv(simd, tv, kind, p, x, u, vs, mode, out) -> int:
    """One activation (``x``, ``u``, ``vs`` its rows) times a tile view into ``out``; returns
    how many entries of ``out`` are not finite."""
    return gemv_plan(simd, tv, kind, p, u, mode)(x, vs, False, out)


def gemv_plan(simd, tv, kind, p, u, mode):
    """``f(x, vs, sums, out) -> int``: :func:`gemv` with everything but the activation bound
    (made once per weight: a call then costs one kernel dispatch). With ``sums`` true, ``vs``
    is a buffer that the kernel fills with the activation's group sums first (affine records)."""
    sc = sides(tv)
    parts = -(-tv.scale_count // simd)
    kernels = {16: (_gemv16, _gemv16h), 8: (_gemv8, _gemv8h)}[simd]
    kernel = kernels[1] if tv.compact else kernels[0]
    args = (tv.codes, kind, tv.table, p, sc, parts, tv.group, tv.n)

    def run(x, vs, sums, out):
        return kernel(*args, x, u, vs, mode, sums, out)

    return run


def batched(simd, tv, kind, p, x, u, vs, mode, out) -> None:
    """``(b, n)`` activations with group scales ``u`` and sums ``vs`` ``(b, groups)``."""
    b = x.shape[0]
    ng = tv.scale_index.shape[1]
    xg = group_major(x, tv.group, ng)
    bp = xg.shape[0] // ng
    up = np.ones((bp, ng))
    up[:b] = u
    vp = np.zeros((bp, ng))
    vp[:b] = vs
    sc = sides(tv)
    parts = -(-tv.scale_count // simd)
    _BATCHED[simd, kind](tv.codes, tv.table, p, sc, parts, tv.group, tv.n, xg, up, vp, mode, out)
