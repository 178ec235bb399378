"""SIMD inner loops of the block-format product kernels, written in LLVM IR as numba intrinsics.

Used by :mod:`mmquant.kernels.products` (which owns the kernels and their on-disk cache: numba
invalidates a cached kernel when *its* file changes, not when this one does -- after editing this
module, touch ``products.py`` or clear its ``__pycache__``).

* ``lut4_group*`` -- 4-bit codes through a 16-entry table of products held in SIMD registers;
* ``bytes_group*`` -- one code per byte, decoded arithmetically in SIMD registers: integer codes
  (``(code ^ k) − k + base) · step``: unsigned or signed bytes) or minifloat codes
  (``bitcast(sign << 31 | magnitude << shift) · mult``, :func:`mmquant.products.tiles.
  minifloat_fields`, computed in the integers without a subnormal operand), each value exactly
  its table entry;
* :func:`simd_width` -- which variant the CPU numba compiles for can run.

Each variant accumulates ``acc[s, r] = Σ_jj fl32(value(r, jj) · x[t0 + s, x0 + jj])`` for the
``TILE`` rows ``r`` of a tile (one SIMD lane per row) in increasing ``jj`` from ``+0.0`` with no
fused multiply–add: the order of the numpy reference (:mod:`mmquant.products.reference`).
"""

from __future__ import annotations

import functools

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "simd_width",
    "TILE",
    "TB",
    "lut4_group16x4",
    "lut4_group8x4",
    "bytes_group16x4",
    "bytes_group8x4",
    "bytes_group16mx4",
    "bytes_group8mx4",
    "scale_lookup16",
    "scale_lookup8",
]

# ---------------------------------------------------------------------------------------------
# 16-entry look-ups in SIMD registers.
#
# LLVM does not turn ``table[code]`` into a vector operation on its own (a gather, which it
# avoids on most CPUs), so a 4-bit code × float GEMV in plain numba decodes one code at a time.
# ``lut4_group*`` write the inner loop of one group in LLVM IR: for every column j the 16
# products P[c] = fl32(table[c]·x_j) are formed once in a register; the codes of the tile's rows
# (mmquant.products.tiles: the pair layout, 64 bytes per two columns) are loaded as 32-bit
# words, shifted so that each row's code is in the low 4 bits of its lane, and P[code] is picked
# for every row with a variable permute (AVX-512 vpermps over 16 lanes, which reads 4 index bits;
# or two AVX2 vpermps over 8 lanes, 3 bits, and a select on bit 3) and added to the row's float32
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


def _finish(context, builder, a, args, i0, tb, vec, rows):
    """The end of a group. With ``mode`` (argument ``i0 + 5``) 1 to 4, step 3 of the contract
    in SIMD registers -- ``y[ta + s, r] += (f64(srow[r]) · u[ta + s, k]) · f64(acc)`` for every
    row ``r`` and activation ``s`` (float64, the reference's order), plus
    ``(f64(orow[r]) · u[ta + s, k]) · vsum[ta + s, k]`` in mode 2 (affine records); modes 3 and 4
    are 1 and 2 for ``u`` all ones (the multiplies by 1 left out: the same numbers) -- in mode 0
    the float32 sums stored to ``acc`` ``(tb, TILE)`` (argument ``i0 − 1``). ``rows[s]`` lists
    ``(first row, slot)`` of the accumulators of activation ``s``."""
    f32, f64, i32, i64 = ir.FloatType(), ir.DoubleType(), ir.IntType(32), ir.IntType(64)
    vf = ir.VectorType(f32, vec)
    half = vec // 2
    vd = ir.VectorType(f64, half)
    aptr = context.make_array(a[i0 - 1])(context, builder, args[i0 - 1]).data
    sptr = context.make_array(a[i0])(context, builder, args[i0]).data
    uarr = context.make_array(a[i0 + 1])(context, builder, args[i0 + 1])
    ng = cgutils.unpack_tuple(builder, uarr.shape, 2)[1]
    kv = context.cast(builder, args[i0 + 2], a[i0 + 2], types.intp)
    tav = context.cast(builder, args[i0 + 3], a[i0 + 3], types.intp)
    yptr = context.make_array(a[i0 + 4])(context, builder, args[i0 + 4]).data
    mode = context.cast(builder, args[i0 + 5], a[i0 + 5], types.intp)
    optr = context.make_array(a[i0 + 6])(context, builder, args[i0 + 6]).data
    vptr = context.make_array(a[i0 + 7])(context, builder, args[i0 + 7]).data
    undef_f, undef_d = ir.Constant(vf, ir.Undefined), ir.Constant(vd, ir.Undefined)
    lo_idx = ir.Constant(ir.VectorType(i32, half), list(range(half)))
    hi_idx = ir.Constant(ir.VectorType(i32, half), list(range(half, vec)))
    dsplat = ir.Constant(ir.VectorType(i32, half), [0] * half)

    def halves(v):
        return [
            builder.fpext(builder.shuffle_vector(v, undef_f, ix), vd) for ix in (lo_idx, hi_idx)
        ]

    def load_halves(ptr, off):
        p = builder.bitcast(builder.gep(ptr, [ir.Constant(i64, off)]), vf.as_pointer())
        return halves(builder.load(p, align=4))

    def splat_d(v):
        return builder.shuffle_vector(
            builder.insert_element(undef_d, v, ir.Constant(i32, 0)), undef_d, dsplat
        )

    def fused(with_off, unit):
        scales, offs = {}, {}
        for s in range(tb):
            row_t = builder.add(tav, ir.Constant(i64, s))
            at = builder.add(builder.mul(row_t, ng), kv)
            utv = None if unit else splat_d(builder.load(builder.gep(uarr.data, [at])))
            vtv = splat_d(builder.load(builder.gep(vptr, [at]))) if with_off else None
            ybase = builder.mul(row_t, ir.Constant(i64, TILE))
            for off, slot in rows[s]:
                if off not in scales:
                    scales[off] = load_halves(sptr, off)
                    if with_off:
                        offs[off] = load_halves(optr, off)
                accd = halves(builder.load(slot))
                for h in range(2):
                    yp = builder.gep(yptr, [builder.add(ybase, ir.Constant(i64, off + h * half))])
                    yp = builder.bitcast(yp, vd.as_pointer())
                    # u ≡ 1 (float activations): S·1 = S exactly, the multiply is left out
                    su = scales[off][h] if unit else builder.fmul(scales[off][h], utv)
                    term = builder.fmul(su, accd[h])
                    if with_off:
                        ou = offs[off][h] if unit else builder.fmul(offs[off][h], utv)
                        oterm = builder.fmul(ou, vtv)
                        term = builder.fadd(term, oterm)
                    builder.store(builder.fadd(builder.load(yp, align=8), term), yp, align=8)

    with builder.if_else(builder.icmp_signed("!=", mode, ir.Constant(i64, 0))) as (
        then,
        otherwise,
    ):
        with then:  # mode 1, 2: with u; 3, 4: u ≡ 1; 2 and 4 with offsets
            unit = builder.icmp_signed(">=", mode, ir.Constant(i64, 3))
            m = builder.select(unit, builder.sub(mode, ir.Constant(i64, 2)), mode)
            two = builder.icmp_signed("==", m, ir.Constant(i64, 2))
            with builder.if_else(unit) as (ones, general):
                for is_unit, blk in ((True, ones), (False, general)):
                    with blk:
                        with builder.if_else(two) as (with_off, plain):
                            with with_off:
                                fused(True, is_unit)
                            with plain:
                                fused(False, is_unit)
        with otherwise:
            for s in range(tb):
                for off, slot in rows[s]:
                    dst = builder.gep(aptr, [ir.Constant(i64, s * TILE + off)])
                    dst = builder.bitcast(dst, vf.as_pointer())
                    builder.store(builder.load(slot), dst, align=4)


def _make(vec: int, tb: int, pairs: bool = False):
    """The intrinsic for ``vec`` float32 lanes per register (16 or 8) and ``tb`` activations;
    with ``pairs``, a group from an even column runs its columns two at a time, with constant
    shifts (measured 6 % faster at 4 activations; one activation: slower)."""
    name = "llvm.x86.avx512.permvar.sf.512" if vec == 16 else "llvm.x86.avx2.permps"

    @intrinsic
    def lut4_group(
        typingctx, codes, c0, ncols, x, t0, x0, table, acc, srow, u, k, ta, y, fuse, orow, vsum
    ):
        """``acc[s, r] = Σ_{jj < ncols} fl32(table[code(r, jj)] · x[t0 + s, x0 + jj])`` for the
        ``TILE`` rows ``r`` of a tile whose codes ``codes`` are in the pair layout of
        :mod:`mmquant.products.tiles`, ``jj`` counting from its column ``c0``, and the ``tb``
        activations ``s`` (``x`` C-contiguous ``(b, n)``, ``acc`` ``(tb, TILE)``)."""
        sig = types.void(
            codes, c0, ncols, x, t0, x0, table, acc, srow, u, k, ta, y, fuse, orow, vsum
        )

        def codegen(context, builder, signature, args):
            a = signature.args
            cptr = context.make_array(a[0])(context, builder, args[0]).data
            xarr = context.make_array(a[3])(context, builder, args[3])
            xptr = xarr.data
            nrow = cgutils.unpack_tuple(builder, xarr.shape, 2)[1]
            tptr = context.make_array(a[6])(context, builder, args[6]).data
            c0v = context.cast(builder, args[1], a[1], types.intp)
            ncv = context.cast(builder, args[2], a[2], types.intp)
            t0v = context.cast(builder, args[4], a[4], types.intp)
            x0v = context.cast(builder, args[5], a[5], types.intp)
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vf, vi = ir.VectorType(f32, vec), ir.VectorType(i32, vec)
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
            m8 = ir.Constant(vi, [8] * vec)
            izero = ir.Constant(vi, [0] * vec)
            undef = ir.Constant(vf, ir.Undefined)
            splat = ir.Constant(vi, [0] * vec)

            def look(prods, idx, upper):
                if vec == 16:
                    return builder.call(perm, [prods[0], idx])
                lo = builder.call(perm, [prods[0], idx])
                hi = builder.call(perm, [prods[1], idx])
                return builder.select(upper, hi, lo)

            words_per = 16 // vec  # word vectors per pair of columns
            one = ir.Constant(i64, 1)

            def body(jj, sh0):
                """Column ``c0 + jj``; ``sh0`` = 16·(its index mod 2), an i32 value."""
                j = builder.add(c0v, jj)  # the column (pair layout, mmquant.products.tiles)
                pbase = builder.mul(builder.lshr(j, one), ir.Constant(i64, 64))
                words = []
                for w in range(words_per):
                    bp = builder.gep(cptr, [builder.add(pbase, ir.Constant(i64, 4 * vec * w))])
                    words.append(builder.load(builder.bitcast(bp, vi.as_pointer()), align=1))
                idx = []  # (index, bit-3 mask) of rows 16q + vec·w .. for q = 0..3
                for q in range(4):
                    shv = builder.add(sh0, ir.Constant(i32, 4 * q))
                    sh = builder.shuffle_vector(
                        builder.insert_element(
                            ir.Constant(vi, ir.Undefined), shv, ir.Constant(i32, 0)
                        ),
                        ir.Constant(vi, ir.Undefined),
                        splat,
                    )
                    for word in words:
                        nib = builder.lshr(word, sh)
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
                    for q in range(2 * chunks):
                        nib, up = idx[q]
                        slot = accs[s][q]
                        if vals is None:
                            val = look(prods, nib, up)
                        else:
                            val = builder.fmul(vals[q], xs)
                        builder.store(builder.fadd(builder.load(slot), val), slot)

            def variable():
                with cgutils.for_range(builder, ncv) as loop:
                    odd = builder.and_(builder.add(c0v, loop.index), one)
                    body(loop.index, builder.trunc(builder.shl(odd, ir.Constant(i64, 4)), i32))

            if not pairs:
                variable()
            else:  # from an even column: pairs with constant shifts, then an even last column
                even = builder.icmp_unsigned("==", builder.and_(c0v, one), ir.Constant(i64, 0))
                with builder.if_else(even) as (then, otherwise):
                    with then:
                        with cgutils.for_range(builder, builder.lshr(ncv, one)) as loop:
                            jj = builder.shl(loop.index, one)
                            body(jj, ir.Constant(i32, 0))
                            body(builder.add(jj, one), ir.Constant(i32, 16))
                        with builder.if_then(builder.trunc(ncv, ir.IntType(1))):
                            body(builder.sub(ncv, one), ir.Constant(i32, 0))
                    with otherwise:
                        variable()
            rows = [[(vec * q, accs[s][q]) for q in range(2 * chunks)] for s in range(tb)]
            _finish(context, builder, a, args, 8, tb, vec, rows)
            return context.get_dummy_value()

        return sig, codegen

    return lut4_group


#: Activations per call of the batched variants.
TB = 4
#: The AVX-512 variant (16 lanes, :data:`TB` activations); only where simd_width() is 16. (One
#: activation: :mod:`mmquant.kernels.simd_tiles`, a whole tile per call.)
lut4_group16x4 = _make(16, TB, pairs=True)
#: The AVX2 variant (8 lanes); only where :func:`simd_width` is at least 8.
lut4_group8x4 = _make(8, TB, pairs=True)


# ---------------------------------------------------------------------------------------------
# One code per byte, decoded arithmetically in SIMD registers (no gather).
#
# A 256-entry table look-up does not vectorise (LLVM emits one load per code, or a slow
# gather), so the byte codes whose table has arithmetic structure are decoded with integer and
# bit operations: for every column jj of a tile the TILE codes (one byte per row) are loaded as
# vectors, widened to 32 bits and turned into the exact float32 table values, then multiplied
# by the activation and added to the row's accumulator (as above: no fused multiply-add).


def _make_bytes(vec: int, tb: int, mini: bool):
    """The byte-code intrinsic for ``vec`` lanes, ``tb`` activations; minifloat or integer."""

    @intrinsic
    def bytes_group(
        typingctx,
        codes,
        c0,
        ncols,
        x,
        t0,
        x0,
        fa,
        fb,
        ia,
        ib,
        ic,
        acc,
        srow,
        u,
        k,
        ta,
        y,
        fuse,
        orow,
        vsum,
    ):
        """``acc[s, r] = Σ_{jj < ncols} fl32(value(code(r, jj)) · x[t0 + s, x0 + jj])`` for
        the ``TILE`` rows of a tile whose column ``jj`` is the ``TILE`` bytes at
        ``c0 + jj·TILE``. Integer: ``value(c) = (float((c ^ ia) − ia) + fa) · fb``; minifloat
        with ``m = (c & ib) << ic`` and ``fa = 2^(e − 126)`` (``2^e`` the minifloat's
        ``mult``): the float32 fields rebased by ``e`` in the integers,
        ``bitcast(m + (e << 23))`` for a normal ``m``, ``bitcast(m + ((e + 1) << 23)) − fa``
        for a subnormal one (exact: Sterbenz), then the sign bit ``(c >> ia) & 1`` -- exactly
        ``bitcast(sign << 31 | m) · 2^e`` without a subnormal operand."""
        sig = types.void(
            codes,
            c0,
            ncols,
            x,
            t0,
            x0,
            fa,
            fb,
            ia,
            ib,
            ic,
            acc,
            srow,
            u,
            k,
            ta,
            y,
            fuse,
            orow,
            vsum,
        )

        def codegen(context, builder, signature, args):
            a = signature.args
            cptr = context.make_array(a[0])(context, builder, args[0]).data
            xarr = context.make_array(a[3])(context, builder, args[3])
            xptr = xarr.data
            nrow = cgutils.unpack_tuple(builder, xarr.shape, 2)[1]
            c0v = context.cast(builder, args[1], a[1], types.intp)
            ncv = context.cast(builder, args[2], a[2], types.intp)
            t0v = context.cast(builder, args[4], a[4], types.intp)
            x0v = context.cast(builder, args[5], a[5], types.intp)
            fav = context.cast(builder, args[6], a[6], types.float32)
            fbv = context.cast(builder, args[7], a[7], types.float32)
            iav = context.cast(builder, args[8], a[8], types.int32)
            ibv = context.cast(builder, args[9], a[9], types.int32)
            icv = context.cast(builder, args[10], a[10], types.int32)
            f32, i32, i8, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(8), ir.IntType(64)
            vf, vi, vb = ir.VectorType(f32, vec), ir.VectorType(i32, vec), ir.VectorType(i8, vec)
            zero_i = ir.Constant(i32, 0)

            def splat(val, vty):
                undef = ir.Constant(vty, ir.Undefined)
                ins = builder.insert_element(undef, val, zero_i)
                return builder.shuffle_vector(ins, undef, ir.Constant(vi, [0] * vec))

            fa_v, fb_v = splat(fav, vf), splat(fbv, vf)
            ia_v, ib_v, ic_v = splat(iav, vi), splat(ibv, vi), splat(icv, vi)
            one = ir.Constant(vi, [1] * vec)
            s31 = ir.Constant(vi, [31] * vec)
            k1_v = builder.bitcast(fa_v, vi)
            emask = ir.Constant(vi, [0x7F800000] * vec)
            e1 = ir.Constant(vi, [1 << 23] * vec)
            izero = ir.Constant(vi, [0] * vec)
            xrows = [
                builder.gep(
                    xptr,
                    [builder.add(builder.mul(builder.add(t0v, ir.Constant(i64, s)), nrow), x0v)],
                )
                for s in range(tb)
            ]
            zero = ir.Constant(vf, [0.0] * vec)
            chunks = TILE // vec
            accs = [
                [cgutils.alloca_once_value(builder, zero) for _ in range(chunks)] for _ in range(tb)
            ]
            for row in accs:
                for slot in row:
                    builder.store(zero, slot)
            with cgutils.for_range(builder, ncv) as loop:
                jj = loop.index
                base = builder.add(c0v, builder.mul(jj, ir.Constant(i64, TILE)))
                vals = []
                for q in range(chunks):
                    bp = builder.gep(cptr, [builder.add(base, ir.Constant(i64, vec * q))])
                    byte = builder.load(builder.bitcast(bp, vb.as_pointer()), align=1)
                    c = builder.zext(byte, vi)
                    if mini:  # no subnormal float32 on the way (they are slow on some CPUs)
                        sgn = builder.shl(builder.and_(builder.lshr(c, ia_v), one), s31)
                        raw = builder.shl(builder.and_(c, ib_v), ic_v)
                        t = builder.add(raw, k1_v)
                        normal = builder.icmp_unsigned("!=", builder.and_(raw, emask), izero)
                        rn = builder.bitcast(builder.sub(t, e1), vf)
                        rs = builder.fsub(builder.bitcast(t, vf), fa_v)
                        r = builder.bitcast(builder.select(normal, rn, rs), vi)
                        f = builder.bitcast(builder.or_(r, sgn), vf)
                    else:
                        v = builder.sub(builder.xor(c, ia_v), ia_v)
                        f = builder.fmul(builder.fadd(builder.sitofp(v, vf), fa_v), fb_v)
                    vals.append(f)
                for s in range(tb):
                    xj = builder.load(builder.gep(xrows[s], [jj]))
                    xs = splat(xj, vf)
                    for q in range(chunks):
                        slot = accs[s][q]
                        val = builder.fmul(vals[q], xs)
                        builder.store(builder.fadd(builder.load(slot), val), slot)
            rows = [[(vec * q, accs[s][q]) for q in range(chunks)] for s in range(tb)]
            _finish(context, builder, a, args, 12, tb, vec, rows)
            return context.get_dummy_value()

        return sig, codegen

    return bytes_group


#: Byte-code variants (:data:`TB` activations): ``bytes_group{16,8}x4`` integer, ``…mx4``
#: minifloat.
bytes_group16x4 = _make_bytes(16, TB, False)
bytes_group16mx4 = _make_bytes(16, TB, True)
bytes_group8x4 = _make_bytes(8, TB, False)
bytes_group8mx4 = _make_bytes(8, TB, True)


# ---------------------------------------------------------------------------------------------
# Group scales through their uint8 indices: a table of up to 256 float32 scales in ``parts``
# registers of ``vec`` entries, each index picked with a variable permute per part and a select
# on the part number (MX E8M0 exponents: usually one part; NVFP4 block scales: a few).


def _make_scales(vec: int):
    name = "llvm.x86.avx512.permvar.sf.512" if vec == 16 else "llvm.x86.avx2.permps"
    shift = 4 if vec == 16 else 3

    @intrinsic
    def scale_lookup(typingctx, sidx, table, parts, out):
        """``out[r] = table[sidx[r]]`` for the ``TILE`` rows (``sidx`` uint8 ``(TILE,)``,
        ``table`` float32 ``(256,)``, every index below ``parts · vec``). With AVX-512 and at
        most two parts (≤ 32 scales: NVFP4, MX), one two-register permute per 16 rows."""
        sig = types.void(sidx, table, parts, out)

        def codegen(context, builder, signature, args):
            a = signature.args
            iptr = context.make_array(a[0])(context, builder, args[0]).data
            tptr = context.make_array(a[1])(context, builder, args[1]).data
            optr = context.make_array(a[3])(context, builder, args[3]).data
            npart = context.cast(builder, args[2], a[2], types.intp)
            f32, i32, i8, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(8), ir.IntType(64)
            vf, vi, vb = ir.VectorType(f32, vec), ir.VectorType(i32, vec), ir.VectorType(i8, vec)
            chunks = TILE // vec

            def indices(q):
                bp = builder.gep(iptr, [ir.Constant(i64, vec * q)])
                return builder.zext(builder.load(builder.bitcast(bp, vb.as_pointer()), align=1), vi)

            def dest(q):
                return builder.bitcast(
                    builder.gep(optr, [ir.Constant(i64, vec * q)]), vf.as_pointer()
                )

            def table_part(off):
                src = builder.gep(tptr, [off])
                return builder.load(builder.bitcast(src, vf.as_pointer()), align=4)

            def two_parts():
                perm2 = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vf, [vf, vi, vf]), _PERM2
                )
                lo, hi = table_part(ir.Constant(i64, 0)), table_part(ir.Constant(i64, vec))
                for q in range(chunks):
                    idx = builder.and_(indices(q), ir.Constant(vi, [2 * vec - 1] * vec))
                    builder.store(builder.call(perm2, [lo, idx, hi]), dest(q), align=4)

            def any_parts():
                perm = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vf, [vf, vi]), name
                )
                lanes, hi, slots = [], [], []
                for q in range(chunks):
                    idx = indices(q)
                    lanes.append(builder.and_(idx, ir.Constant(vi, [vec - 1] * vec)))
                    hi.append(builder.lshr(idx, ir.Constant(vi, [shift] * vec)))
                    slots.append(cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * vec)))
                    builder.store(ir.Constant(vf, [0.0] * vec), slots[-1])
                undef = ir.Constant(vi, ir.Undefined)
                with cgutils.for_range(builder, npart) as loop:
                    p = loop.index
                    part = table_part(builder.mul(p, ir.Constant(i64, vec)))
                    p32 = builder.trunc(p, i32)
                    pv = builder.shuffle_vector(
                        builder.insert_element(undef, p32, ir.Constant(i32, 0)),
                        undef,
                        ir.Constant(vi, [0] * vec),
                    )
                    for q in range(chunks):
                        cand = builder.call(perm, [part, lanes[q]])
                        hit = builder.icmp_unsigned("==", hi[q], pv)
                        builder.store(builder.select(hit, cand, builder.load(slots[q])), slots[q])
                for q in range(chunks):
                    builder.store(builder.load(slots[q]), dest(q), align=4)

            if vec == 16:
                few = builder.icmp_signed("<=", npart, ir.Constant(i64, 2))
                with builder.if_else(few, likely=True) as (then, otherwise):
                    with then:
                        two_parts()
                    with otherwise:
                        any_parts()
            else:
                any_parts()
            return context.get_dummy_value()

        return sig, codegen

    return scale_lookup


#: Two-register variable permute (AVX-512 ``vpermi2ps``): 32 float32 entries, 5-bit indices.
_PERM2 = "llvm.x86.avx512.vpermi2var.ps.512"

#: Scale look-ups (AVX-512, AVX2).
scale_lookup16 = _make_scales(16)
scale_lookup8 = _make_scales(8)
