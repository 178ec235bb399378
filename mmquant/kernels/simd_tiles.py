"""Whole-tile GEMV inner loops (one activation) in LLVM IR, as numba intrinsics.

The group variants of :mod:`mmquant.kernels.simd` are called once per group of a tile: each call
sets up its registers, sums the group's columns, then scales the sums and adds them to the
tile's float64 row sums in memory. For a GEMV (one activation, 4-bit codes in groups of 32) that
set-up and epilogue cost about as much as the columns themselves. ``gemv_tile*`` run the whole
row of groups of a tile in one call: the 16-entry table (or the byte decoder's constants) is
loaded once, the float64 row sums stay in registers from the first group to the last, and every
group's epilogue (step 3 of :mod:`mmquant.products.reference`: ``y += (S·u)·P [+ (O·u)·V]``, in
float64, the reference's order) is a few register operations. The columns are the group variants'
(same loads, look-ups and float32 additions in increasing column order from ``+0.0``, no fused
multiply-add): the numbers are the same, bit for bit. ``gemv_2tiles*`` run two tiles in one
column loop: each row still sums in its own lane and order, but eight accumulators instead of four
keep the float32 additions, whose latency bounds a one-tile column, from waiting on each other.

Kinds: 0 -- 4-bit codes through the 16-entry table of products (variable permutes); 1 -- integer
bytes; 2 -- minifloat bytes (the decoders of :mod:`mmquant.kernels.simd`). Widths 16 (AVX-512)
and 8 (AVX2) float32 lanes.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from mmquant.kernels.simd import TILE

__all__ = [
    "gemv_tile16",
    "gemv_tile8",
    "gemv_2tiles16",
    "gemv_2tiles8",
    "half_tile",
    "PREFETCH",
    "SCALE_PREFETCH",
]

#: Bytes ahead of the column being read that each column prefetches its tile's codes from
#: (measured one thread, 4096², flushed caches: int4 GEMV 0.44 → 0.40 ms, int8 0.79 → 0.76).
PREFETCH = 4096

#: Groups ahead of the one being scaled that each group's epilogue prefetches the scales (and
#: offsets) of: the second stream of a tile, which the hardware prefetchers alone left behind
#: (measured one thread, 4096², after a float32 GEMV, median of 30: NVFP4 0.75 → 0.62 ms, affine
#: INT4 0.69 → 0.60 ms, INT4 0.64 → 0.56 ms; the best times unchanged). Prefetches past the
#: end of the array are harmless (a prefetch never faults).
SCALE_PREFETCH = 8


def _make(vec: int, prefetch: int = PREFETCH, tiles: int = 1):
    perm_name = "llvm.x86.avx512.permvar.sf.512" if vec == 16 else "llvm.x86.avx2.permps"

    @intrinsic
    def gemv_tile(
        typingctx, codes, x, n, g, kind, fa, fb, ia, ib, ic, table, scale, offset, unit, u, vsum,
        mode, y,
    ):  # fmt: skip
        """``y[t, r] = Σ_k ((S[t, k, r]·u[k])·P_tkr [+ (O[t, k, r]·u[k])·vsum[k]])`` for the
        ``TILE`` rows ``r`` of ``tiles`` tiles ``t`` at once (``codes`` ``(tiles, ·)`` their rows
        of the tiled layout, ``x`` the activation ``(≥ n,)``, ``scale`` and ``offset`` ``(tiles,
        groups, TILE)``, ``u`` and ``vsum`` ``(groups,)``, ``y`` ``(tiles, TILE)``), ``P_tkr``
        the float32 group sums, each row's in its own lane and order: two tiles give eight
        independent chains of float32 additions where one tile's four bound a column by their
        latency; ``mode`` as in
        :func:`mmquant.kernels.simd._finish` (1 to 4). ``scale`` and ``offset`` are float32, or
        uint16 holding IEEE half-precision bits: ``S = fl32(half(scale) · unit)`` and
        ``O = half(offset)`` (the compact layout of :mod:`mmquant.products.tiles`; the dtype
        chooses the code at compile time)."""
        sig = types.void(
            codes, x, n, g, kind, fa, fb, ia, ib, ic, table, scale, offset, unit, u, vsum, mode, y
        )
        kinds = (0, 1, 2)

        def codegen(context, builder, signature, args):
            a = signature.args

            def data(i):
                return context.make_array(a[i])(context, builder, args[i]).data

            def cast(i, ty):
                return context.cast(builder, args[i], a[i], ty)

            cptr, xptr, tptr, sptr, optr, uptr, vptr, yptr = (
                data(i) for i in (0, 1, 10, 11, 12, 14, 15, 17)
            )
            nv, gv, kindv, modev = (cast(i, types.intp) for i in (2, 3, 4, 16))
            s16, o16 = (a[i].dtype == types.uint16 for i in (11, 12))
            fav, fbv, unitv = (cast(i, types.float32) for i in (5, 6, 13))
            iav, ibv, icv = (cast(i, types.int32) for i in (7, 8, 9))
            f32, f64 = ir.FloatType(), ir.DoubleType()
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            vf, vi, vb = ir.VectorType(f32, vec), ir.VectorType(i32, vec), ir.VectorType(i8, vec)
            half = vec // 2
            vd, vhf = ir.VectorType(f64, half), ir.VectorType(f32, half)
            zero_i = ir.Constant(i32, 0)
            i16, f16 = ir.IntType(16), ir.HalfType()

            def c64(v):
                return ir.Constant(i64, v)

            def splat(val, vty):
                undef = ir.Constant(vty, ir.Undefined)
                ins = builder.insert_element(undef, val, zero_i)
                mask = ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count)
                return builder.shuffle_vector(ins, undef, mask)

            def vload(ptr, off, vty, align=4):
                p = builder.bitcast(builder.gep(ptr, [off]), vty.as_pointer())
                return builder.load(p, align=align)

            pf = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]),
                "llvm.prefetch.p0i8",
            )
            perm = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vf, [vf, vi]), perm_name
            )
            # row sums (float64, in registers across the groups): 2 halves per accumulator
            nacc = TILE // vec
            zero_f = ir.Constant(vf, [0.0] * vec)
            zero_d = ir.Constant(vd, [0.0] * half)
            tl = range(tiles)
            ys = [[cgutils.alloca_once_value(builder, zero_d) for _ in range(2 * nacc)] for _ in tl]
            accs = [[cgutils.alloca_once_value(builder, zero_f) for _ in range(nacc)] for _ in tl]
            for s in (s for yt in ys for s in yt):
                builder.store(zero_d, s)

            def shape(i, nd):
                arr = context.make_array(a[i])(context, builder, args[i])
                return cgutils.unpack_tuple(builder, arr.shape, nd)

            # the groups: the rows of ``scale`` (a group past column n has no columns); each
            # tile's codes, scales, offsets and sums (contiguous arrays: a row apart)
            cshape, sshape, oshape = shape(0, 2), shape(11, 3), shape(12, 3)
            ng = sshape[1]
            cstride = cshape[1]
            sstride, ostride = (builder.mul(sh[1], sh[2]) for sh in (sshape, oshape))
            cptrs = [builder.gep(cptr, [builder.mul(cstride, c64(t))]) for t in tl]
            sptrs = [builder.gep(sptr, [builder.mul(sstride, c64(t))]) for t in tl]
            optrs = [builder.gep(optr, [builder.mul(ostride, c64(t))]) for t in tl]
            yptrs = [builder.gep(yptr, [c64(TILE * t)]) for t in tl]
            unit = builder.icmp_signed(">=", modev, c64(3))
            with_off = builder.icmp_signed(
                "==", builder.select(unit, builder.sub(modev, c64(2)), modev), c64(2)
            )
            lo_idx = ir.Constant(ir.VectorType(i32, half), list(range(half)))
            hi_idx = ir.Constant(ir.VectorType(i32, half), list(range(half, vec)))
            undef_f = ir.Constant(vf, ir.Undefined)
            unit_h = splat(unitv, vhf)

            def group_loop(kd):
                """The groups of the tile for one kind of code (``kd``), the column body
                specialised at compile time."""
                rows = [vec * q for q in range(nacc)]  # the first row of each accumulator
                if kd == 0:
                    parts = [vload(tptr, c64(p * vec), vf) for p in range(16 // vec)]
                else:
                    fa_v, fb_v = splat(fav, vf), splat(fbv, vf)
                    ia_v, ib_v, ic_v = splat(iav, vi), splat(ibv, vi), splat(icv, vi)
                m8 = ir.Constant(vi, [8] * vec)
                izero = ir.Constant(vi, [0] * vec)

                def ahead(cp, off):
                    """Prefetch the codes ``prefetch`` bytes past ``off`` (the hardware
                    prefetchers alone leave the core waiting for memory now and then)."""
                    if prefetch:
                        pa = builder.gep(cp, [builder.add(off, c64(prefetch))])
                        builder.call(pf, [pa, zero_i, ir.Constant(i32, 3), ir.Constant(i32, 1)])

                def column(j):
                    """Values ``fl32(value(code(r, j)) · x_j)`` of the tiles' rows, by tile and
                    accumulator."""
                    xs = splat(builder.load(builder.gep(xptr, [j])), vf)
                    if kd == 0:
                        prods = [builder.fmul(p, xs) for p in parts]
                    return [tile_column(cp, j, xs, prods if kd == 0 else None) for cp in cptrs]

                def tile_column(cp, j, xs, prods):
                    """:func:`column` for the tile whose codes are at ``cp``."""
                    out = [None] * nacc
                    if kd == 0:  # the pair layout (mmquant.products.tiles)
                        pbase = builder.mul(builder.lshr(j, c64(1)), c64(64))
                        # (a loop over pairs of columns with constant shifts measured slower,
                        # twice: 2026-12-03, int4 4096² hot 0.386 against 0.367 ms with 28 % fewer
                        # vector instructions: the accumulators' float32 add chains bound it)
                        sh0 = builder.trunc(builder.shl(builder.and_(j, c64(1)), c64(4)), i32)
                        words = [
                            vload(cp, builder.add(pbase, c64(4 * vec * w)), vi, 1)
                            for w in range(16 // vec)
                        ]
                        ahead(cp, pbase)
                        for q in range(4):
                            sh = splat(builder.add(sh0, ir.Constant(i32, 4 * q)), vi)
                            for w, word in enumerate(words):
                                nib = builder.lshr(word, sh)
                                if vec == 16:  # vpermps reads the index's low 4 bits only
                                    val = builder.call(perm, [prods[0], nib])
                                else:  # the low 3 bits, and a select on bit 3
                                    up = builder.icmp_unsigned("!=", builder.and_(nib, m8), izero)
                                    lo = builder.call(perm, [prods[0], nib])
                                    hi = builder.call(perm, [prods[1], nib])
                                    val = builder.select(up, hi, lo)
                                out[q * (16 // vec) + w] = val  # rows 16q + vec·w ..
                        return out
                    base = builder.mul(j, c64(TILE))
                    ahead(cp, base)
                    for q in range(nacc):
                        byte = vload(cp, builder.add(base, c64(vec * q)), vb, 1)
                        c = builder.zext(byte, vi)
                        if kd == 2:
                            one = ir.Constant(vi, [1] * vec)
                            sgn = builder.shl(
                                builder.and_(builder.lshr(c, ia_v), one),
                                ir.Constant(vi, [31] * vec),
                            )
                            raw = builder.shl(builder.and_(c, ib_v), ic_v)
                            t = builder.add(raw, builder.bitcast(fa_v, vi))
                            normal = builder.icmp_unsigned(
                                "!=",
                                builder.and_(raw, ir.Constant(vi, [0x7F800000] * vec)),
                                izero,
                            )
                            rn = builder.bitcast(
                                builder.sub(t, ir.Constant(vi, [1 << 23] * vec)), vf
                            )
                            rs = builder.fsub(builder.bitcast(t, vf), fa_v)
                            r = builder.bitcast(builder.select(normal, rn, rs), vi)
                            f = builder.bitcast(builder.or_(r, sgn), vf)
                        else:
                            v = builder.sub(builder.xor(c, ia_v), ia_v)
                            f = builder.fmul(builder.fadd(builder.sitofp(v, vf), fa_v), fb_v)
                        out[q] = builder.fmul(f, xs)
                    return out

                def side(ptr, o, compact, mul):
                    """Half a register of scales (or offsets) at ``o``, as float64."""
                    if not compact:
                        return builder.fpext(vload(ptr, o, vhf), vd)
                    bits = vload(ptr, o, ir.VectorType(i16, half), 2)
                    v = builder.fpext(builder.bitcast(bits, ir.VectorType(f16, half)), vhf)
                    return builder.fpext(builder.fmul(v, mul) if mul is not None else v, vd)

                def epilogue(k, with_o, is_unit):
                    uk = None if is_unit else splat(builder.load(builder.gep(uptr, [k])), vd)
                    vk = splat(builder.load(builder.gep(vptr, [k])), vd) if with_o else None
                    for t in tl:
                        tile_epilogue(k, with_o, uk, vk, sptrs[t], optrs[t], accs[t], ys[t])

                def tile_epilogue(k, with_o, uk, vk, sptr, optr, accs, ys):
                    at = builder.mul(k, c64(TILE))
                    is_unit = uk is None
                    # the scales (and offsets) of group k + SCALE_PREFETCH: a tile's row of them
                    for sp, compact in ((sptr, s16), (optr, o16)) if with_o else ((sptr, s16),):
                        for line in range(2 if compact else 4):
                            step = 32 if compact else 16  # elements per 64-byte line
                            o = builder.add(at, c64(SCALE_PREFETCH * TILE + step * line))
                            pa = builder.bitcast(builder.gep(sp, [o]), i8.as_pointer())
                            builder.call(pf, [pa, zero_i, ir.Constant(i32, 3), ir.Constant(i32, 1)])
                    for q, off in enumerate(rows):
                        acc = builder.load(accs[q])
                        for h, ix in enumerate((lo_idx, hi_idx)):
                            accd = builder.fpext(builder.shuffle_vector(acc, undef_f, ix), vd)
                            o = builder.add(at, c64(off + h * half))
                            sd = side(sptr, o, s16, unit_h)
                            su = sd if is_unit else builder.fmul(sd, uk)
                            term = builder.fmul(su, accd)
                            if with_o:
                                od = side(optr, o, o16, None)
                                ou = od if is_unit else builder.fmul(od, uk)
                                term = builder.fadd(term, builder.fmul(ou, vk))
                            slot = ys[2 * q + h]
                            builder.store(builder.fadd(builder.load(slot), term), slot)

                def add(vals):
                    for acc_t, vals_t in zip(accs, vals):
                        for s, val in zip(acc_t, vals_t):
                            builder.store(builder.fadd(builder.load(s), val), s)

                # the groups in increasing order, each summed over its columns from +0.0
                with cgutils.for_range(builder, ng) as gl:
                    k = gl.index
                    j0 = builder.mul(k, gv)
                    j1 = builder.add(j0, gv)
                    j1 = builder.select(builder.icmp_signed("<", j1, nv), j1, nv)
                    for s in (s for acc_t in accs for s in acc_t):
                        builder.store(zero_f, s)
                    with cgutils.for_range_slice(builder, j0, j1, c64(1)) as (j, _):
                        add(column(j))
                    with builder.if_else(unit) as (ones, general):
                        for is_unit, blk in ((True, ones), (False, general)):
                            with blk:
                                with builder.if_else(with_off) as (wo, plain):
                                    with wo:
                                        epilogue(k, True, is_unit)
                                    with plain:
                                        epilogue(k, False, is_unit)
                for t in tl:
                    for q, off in enumerate(rows):
                        for h in range(2):
                            yp = builder.gep(yptrs[t], [c64(off + h * half)])
                            builder.store(
                                builder.load(ys[t][2 * q + h]),
                                builder.bitcast(yp, vd.as_pointer()),
                                align=8,
                            )

            bb_end = builder.append_basic_block("gemv_tile.end")
            sw = builder.switch(kindv, bb_end)
            for kd in kinds:
                bb = builder.append_basic_block(f"gemv_tile.kind{kd}")
                sw.add_case(c64(kd), bb)
                builder.position_at_end(bb)
                group_loop(kd)
                builder.branch(bb_end)
            builder.position_at_end(bb_end)
            return context.get_dummy_value()

        return sig, codegen

    return gemv_tile


#: The whole-tile GEMV loops: AVX-512 (16 lanes), AVX2 (8 lanes); one tile, and two at once
#: (:mod:`mmquant.kernels.products_simd` uses two for 4-bit codes; the same numbers).
gemv_tile16 = _make(16)
gemv_tile8 = _make(8)
gemv_2tiles16 = _make(16, tiles=2)
gemv_2tiles8 = _make(8, tiles=2)


@intrinsic
def half_tile(typingctx, bits, unit, out):
    """``out[r] = fl32(half(bits[r]) · unit)`` for the ``TILE`` entries of a row of compact
    scales or offsets (uint16 half-precision bits; ``out`` float32): widened by the CPU's
    half-precision conversion (F16C, which every AVX2 CPU has), then one float32 multiply --
    the values :func:`mmquant.kernels.products_simd.half_row` computes one at a time."""
    sig = types.void(bits, unit, out)

    def codegen(context, builder, signature, args):
        a = signature.args
        src = context.make_array(a[0])(context, builder, args[0]).data
        dst = context.make_array(a[2])(context, builder, args[2]).data
        u = context.cast(builder, args[1], a[1], types.float32)
        vf, vh = ir.VectorType(ir.FloatType(), 16), ir.VectorType(ir.HalfType(), 16)
        vi16 = ir.VectorType(ir.IntType(16), 16)
        zero = ir.Constant(ir.IntType(32), 0)
        us = builder.insert_element(ir.Constant(vf, ir.Undefined), u, zero)
        us = builder.shuffle_vector(
            us,
            ir.Constant(vf, ir.Undefined),
            ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16),
        )
        for p in range(0, TILE, 16):
            off = ir.Constant(ir.IntType(64), p)
            hp = builder.bitcast(builder.gep(src, [off]), vi16.as_pointer())
            h = builder.bitcast(builder.load(hp, align=2), vh)
            v = builder.fmul(builder.fpext(h, vf), us)
            builder.store(v, builder.bitcast(builder.gep(dst, [off]), vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen
