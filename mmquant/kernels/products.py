"""Numba kernels of the products from the codes (:mod:`mmquant.products`), bit-exact with the
numpy reference :mod:`mmquant.products.reference` (its docstring defines the accumulation order).

* :func:`block_product` -- fused unpack, look-up and accumulation of a block-format record times
  float32 activations, from the row-tiled layout (:mod:`mmquant.products.tiles`): one SIMD lane
  per row, so each row's group sum keeps the reference's order; 4-bit codes through the 16-entry
  product tables in SIMD registers (:func:`lut4_group16`, AVX-512 or AVX2), integer codes decoded
  arithmetically, other tables one look-up per code; the scale applied once per group; tiles of
  rows in parallel (``prange``).
* :func:`lattice_dot` -- the block-ordered float64 inner products of decoded lattice blocks with
  rotated activations, rows in parallel.

Importing this module compiles nothing; the first call compiles (cached on disk when a cache
folder is writable: :func:`mmquant.kernels.numba_cache`). Raises ImportError without numba.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from mmquant.kernels import numba_cache

__all__ = ["block_product", "lattice_dot", "simd_width", "TILE", "TB"]

# ---------------------------------------------------------------------------------------------
# 16-entry look-ups in SIMD registers: a numba intrinsic (kept in this module: numba's on-disk
# cache of the kernels below is invalidated by edits of this file only).
#
# LLVM does not turn ``table[code]`` into a vector operation on its own (a gather, which it
# avoids on most CPUs), so a 4-bit code × float GEMV in plain numba decodes one code at a time.
# ``lut4_group*`` write the inner loop of one group in LLVM IR: for every column j the 16
# products P[c] = fl32(table[c]·x_j) are formed once in a register; the codes of the tile's rows
# (mmquant.products.tiles: H bytes, two rows per byte) are loaded as a vector, split into
# nibbles, and P[code] is picked for every row with a variable permute (AVX-512 vpermps over 16
# lanes, or two AVX2 vpermps over 8 lanes and a select on bit 3) and added to the row's float32
# accumulator. The batched variants (TB activations per pass) pick table[code] once per column
# and multiply it by each activation: the same products, one permute for all of them. Each row's
# sum is Σ_j fl32(table[c_j]·x_j) added in increasing j from +0.0, the order of the numpy
# reference, bit for bit; no multiply-add is fused. ``simd_width`` says which variant the CPU
# numba compiles for can run (16, 8, or 0: the kernels then use their plain-numba loops).

#: Rows per tile (must equal :data:`mmquant.products.tiles.TILE`; 2 rows per byte).
TILE = 64
_H = TILE // 2


@functools.cache
def simd_width() -> int:
    """16 (AVX-512F), 8 (AVX2) or 0: the widest look-up variant numba's target CPU has.

    The target is the host CPU unless ``NUMBA_CPU_NAME`` names another (then its
    ``NUMBA_CPU_FEATURES`` decide, and without them no variant is used).
    """
    import llvmlite.binding as ll
    from numba.core import config

    if config.CPU_NAME is not None:
        feats = {f[1:] for f in (config.CPU_FEATURES or "").split(",") if f.startswith("+")}
    else:
        if not ll.get_process_triple().startswith(("x86_64", "i686", "i386")):
            return 0
        fm = ll.get_host_cpu_features()
        feats = {k for k, v in fm.items() if v}
    if "avx512f" in feats:
        return 16
    if "avx2" in feats:
        return 8
    return 0


def _make(vec: int, tb: int):
    """The intrinsic for ``vec`` float32 lanes per register (16 or 8) and ``tb`` activations."""
    name = "llvm.x86.avx512.permvar.sf.512" if vec == 16 else "llvm.x86.avx2.permps"

    @intrinsic
    def lut4_group(typingctx, codes, c0, ncols, x, t0, x0, table, acc):
        """``acc[s, r] = Σ_{jj < ncols} fl32(table[code(r, jj)] · x[t0 + s, x0 + jj])`` for the
        ``TILE`` rows ``r`` of a tile whose column ``jj`` starts at byte ``c0 + jj·H`` of
        ``codes``, and the ``tb`` activations ``s`` (``x`` C-contiguous ``(b, n)``, ``acc``
        ``(tb, TILE)``)."""
        sig = types.void(codes, c0, ncols, x, t0, x0, table, acc)

        def codegen(context, builder, signature, args):
            a = signature.args
            cptr = context.make_array(a[0])(context, builder, args[0]).data
            xarr = context.make_array(a[3])(context, builder, args[3])
            xptr = xarr.data
            nrow = cgutils.unpack_tuple(builder, xarr.shape, 2)[1]
            tptr = context.make_array(a[6])(context, builder, args[6]).data
            aptr = context.make_array(a[7])(context, builder, args[7]).data
            c0v = context.cast(builder, args[1], a[1], types.intp)
            ncv = context.cast(builder, args[2], a[2], types.intp)
            t0v = context.cast(builder, args[4], a[4], types.intp)
            x0v = context.cast(builder, args[5], a[5], types.intp)
            f32, i32, i8, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(8), ir.IntType(64)
            vf, vi, vb = ir.VectorType(f32, vec), ir.VectorType(i32, vec), ir.VectorType(i8, vec)
            perm = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vf, [vf, vi]), name
            )
            # the table as 16 // vec registers
            parts = [
                builder.load(
                    builder.bitcast(
                        builder.gep(tptr, [ir.Constant(i64, p * vec)]), vf.as_pointer()
                    ),
                    align=4,
                )
                for p in range(16 // vec)
            ]
            # the first entry of each activation's row segment
            xrows = [
                builder.gep(
                    xptr,
                    [builder.add(builder.mul(builder.add(t0v, ir.Constant(i64, s)), nrow), x0v)],
                )
                for s in range(tb)
            ]
            zero = ir.Constant(vf, [0.0] * vec)
            chunks = _H // vec
            accs = [
                [cgutils.alloca_once_value(builder, zero) for _ in range(2 * chunks)]
                for _ in range(tb)
            ]
            for row in accs:  # (alloca_once_value stores only in the entry block)
                for slot in row:
                    builder.store(zero, slot)
            m15 = ir.Constant(vi, [15] * vec)
            m8 = ir.Constant(vi, [8] * vec)
            s4 = ir.Constant(vi, [4] * vec)
            izero = ir.Constant(vi, [0] * vec)
            undef = ir.Constant(vf, ir.Undefined)
            splat = ir.Constant(vi, [0] * vec)

            def look(prods, idx, upper):
                if vec == 16:
                    return builder.call(perm, [prods[0], idx])
                lo = builder.call(perm, [prods[0], idx])
                hi = builder.call(perm, [prods[1], idx])
                return builder.select(upper, hi, lo)

            with cgutils.for_range(builder, ncv) as loop:
                jj = loop.index
                base = builder.add(c0v, builder.mul(jj, ir.Constant(i64, _H)))
                idx = []  # (index, bit-3 mask) of the low and high nibbles of every chunk
                for q in range(chunks):
                    bp = builder.gep(cptr, [builder.add(base, ir.Constant(i64, vec * q))])
                    byte = builder.load(builder.bitcast(bp, vb.as_pointer()), align=1)
                    b32 = builder.zext(byte, vi)
                    for nib in (builder.and_(b32, m15), builder.lshr(b32, s4)):
                        up = None
                        if vec != 16:
                            up = builder.icmp_unsigned("!=", builder.and_(nib, m8), izero)
                        idx.append((nib, up))
                # one activation: pick from the 16 products (one permute per code); several:
                # pick the 16 values once, then multiply (one permute per code for all of them)
                vals = None if tb == 1 else [look(parts, nib, up) for nib, up in idx]
                for s in range(tb):
                    xj = builder.load(builder.gep(xrows[s], [jj]))
                    xs = builder.shuffle_vector(
                        builder.insert_element(undef, xj, ir.Constant(i32, 0)), undef, splat
                    )
                    prods = [builder.fmul(p, xs) for p in parts] if tb == 1 else None
                    for q in range(chunks):
                        for h in range(2):  # low nibbles: rows vec·q.., high: H + vec·q..
                            nib, up = idx[2 * q + h]
                            slot = accs[s][h * chunks + q]
                            if vals is None:
                                val = look(prods, nib, up)
                            else:
                                val = builder.fmul(vals[2 * q + h], xs)
                            builder.store(builder.fadd(builder.load(slot), val), slot)
            for s in range(tb):
                for q in range(2 * chunks):
                    off = s * TILE + (vec * q if q < chunks else _H + vec * (q - chunks))
                    dst = builder.gep(aptr, [ir.Constant(i64, off)])
                    dst = builder.bitcast(dst, vf.as_pointer())
                    builder.store(builder.load(accs[s][q]), dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return lut4_group


#: Activations per call of the batched variants.
TB = 4
#: The AVX-512 variants (16 lanes; 1 or :data:`TB` activations); only where simd_width() is 16.
lut4_group16 = _make(16, 1)
lut4_group16x4 = _make(16, TB)
#: The AVX2 variants (8 lanes); only where :func:`simd_width` is at least 8.
lut4_group8 = _make(8, 1)
lut4_group8x4 = _make(8, TB)


_opts = {
    "parallel": True,
    "cache": numba_cache(),
    "fastmath": False,
    "nogil": True,
    "boundscheck": False,
    "error_model": "numpy",
}
_helper = {
    "cache": numba_cache(),
    "fastmath": False,
    "boundscheck": False,
    "error_model": "numpy",
    "inline": "always",
}
_H = TILE // 2


@numba.njit(**_helper)
def _nib_int(codes, c0, ncols, x, x0, base, acc):  # pragma: no cover - compiled
    """4-bit codes ``c + base``: decoded arithmetically (vectorises without a look-up)."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        c = codes[c0 + jj * _H : c0 + jj * _H + _H]  # a slice: LLVM then sees no aliasing
        for r in range(_H):
            v = c[r]
            acc[r] += (np.float32(np.int32(v & 15)) + base) * xj
            acc[r + _H] += (np.float32(np.int32(v >> 4)) + base) * xj


@numba.njit(**_helper)
def _nib_table(codes, c0, ncols, x, x0, table, acc):  # pragma: no cover - compiled
    """4-bit codes through their table, one look-up per code (no SIMD look-up available)."""
    for r in range(TILE):
        acc[r] = 0.0
    for jj in range(ncols):
        xj = x[x0 + jj]
        c = codes[c0 + jj * _H : c0 + jj * _H + _H]  # a slice: LLVM then sees no aliasing
        for r in range(_H):
            v = c[r]
            acc[r] += table[v & 15] * xj
            acc[r + _H] += table[v >> 4] * xj


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
def _add_group(y, acc, scale, offset, has_off, ti, k, t, u, vsum):  # pragma: no cover
    """Step 3 of the contract for one group of a tile and one activation."""
    ut = u[t, k]
    if has_off:
        vt = vsum[t, k]
        for r in range(TILE):
            y[t, r] += (np.float64(scale[ti, k, r]) * ut) * np.float64(acc[r]) + (
                np.float64(offset[ti, k, r]) * ut
            ) * vt
    else:
        for r in range(TILE):
            y[t, r] += (np.float64(scale[ti, k, r]) * ut) * np.float64(acc[r])


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
    for jj in range(ncols):
        w = buf[jj]
        if mode < 2:
            c = codes[c0 + jj * _H : c0 + jj * _H + _H]
            if mode == 0:
                for r in range(_H):
                    w[r] = np.float32(np.int32(c[r] & 15)) + base
                    w[r + _H] = np.float32(np.int32(c[r] >> 4)) + base
            else:
                for r in range(_H):
                    w[r] = table[c[r] & 15]
                    w[r + _H] = table[c[r] >> 4]
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
def _tiles_loop(codes, mode, table, base, scale, offset, has_off, g, x, u, vsum, out):
    """Plain-numba tiles (``mode``: 0 4-bit int, 1 4-bit table, 2 byte int, 3 byte table,
    4 signed byte; ``base`` is the integer base of modes 0 and 2, the step of mode 4).

    For a batch with groups of at most :data:`BUFFERED` columns, each group of a tile is decoded
    once into a float32 buffer, then dotted with every activation."""
    tiles = codes.shape[0]
    b, n = x.shape
    ng = scale.shape[1]
    per = _H if mode < 2 else TILE  # bytes per column (modes 2, 3 and 4: one code per byte)
    buffered = b > 1 and g <= BUFFERED
    for ti in numba.prange(tiles):
        acc = np.empty(TILE, np.float32)
        buf = np.empty((g if buffered else 1, TILE), np.float32)
        y = np.zeros((b, TILE))
        cf = codes[ti]
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if buffered:
                _decode_group(cf, j0 * per, gl, mode, table, base, buf)
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
                _add_group(y, acc, scale, offset, has_off, ti, k, t, u, vsum)
        _store(out, y, ti)


@numba.njit(**_opts)
def _tiles_lut16(codes, table, scale, offset, has_off, g, n, xg, u, vsum, out):
    """4-bit tiles with the AVX-512 look-ups (:func:`lut4_group16`); the activations
    group-major (:func:`_group_major`: ``xg[k·bp + t]`` is group ``k`` of activation ``t``)."""
    tiles = codes.shape[0]
    b = out.shape[1]
    bp = xg.shape[0] // scale.shape[1]
    ng = scale.shape[1]
    for ti in numba.prange(tiles):
        acc = np.empty((TB, TILE), np.float32)
        y = np.zeros((b, TILE))
        cf = codes[ti]
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if b == 1:
                lut4_group16(cf, j0 * _H, gl, xg, k * bp, 0, table, acc)
                _add_group(y, acc[0], scale, offset, has_off, ti, k, 0, u, vsum)
            else:
                for t0 in range(0, b, TB):
                    lut4_group16x4(cf, j0 * _H, gl, xg, k * bp + t0, 0, table, acc)
                    for s in range(min(TB, b - t0)):
                        _add_group(y, acc[s], scale, offset, has_off, ti, k, t0 + s, u, vsum)
        _store(out, y, ti)


@numba.njit(**_opts)
def _tiles_lut8(codes, table, scale, offset, has_off, g, n, xg, u, vsum, out):
    """4-bit tiles with the AVX2 look-ups; as :func:`_tiles_lut16`."""
    tiles = codes.shape[0]
    b = out.shape[1]
    bp = xg.shape[0] // scale.shape[1]
    ng = scale.shape[1]
    for ti in numba.prange(tiles):
        acc = np.empty((TB, TILE), np.float32)
        y = np.zeros((b, TILE))
        cf = codes[ti]
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            if b == 1:
                lut4_group8(cf, j0 * _H, gl, xg, k * bp, 0, table, acc)
                _add_group(y, acc[0], scale, offset, has_off, ti, k, 0, u, vsum)
            else:
                for t0 in range(0, b, TB):
                    lut4_group8x4(cf, j0 * _H, gl, xg, k * bp + t0, 0, table, acc)
                    for s in range(min(TB, b - t0)):
                        _add_group(y, acc[s], scale, offset, has_off, ti, k, t0 + s, u, vsum)
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
    args = (tv.scale, tv.offset, tv.has_offset, tv.group, x, u, vs, out)
    if tv.nibbles and simd:
        xg = _group_major(x, tv.group, tv.scale.shape[1])
        kernel = _tiles_lut16 if simd == 16 else _tiles_lut8
        kernel(
            tv.codes, tv.table, tv.scale, tv.offset, tv.has_offset, tv.group, tv.n, xg, u, vs, out
        )
    else:
        mode = (0 if tv.base is not None else 1) + (0 if tv.nibbles else 2)
        base = np.float32(tv.base if tv.base is not None else 0.0)
        if mode == 3 and tv.step is not None:
            mode, base = 4, np.float32(tv.step)
        _tiles_loop(tv.codes, mode, tv.table, base, *args)
    return out


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
