"""A numba intrinsic for the 4-bit product kernels: 16-entry look-ups in SIMD registers.

LLVM does not turn ``table[code]`` into a vector operation on its own (a gather, which it avoids
on most CPUs), so a 4-bit code × float GEMV written in plain numba decodes one code at a time.
:func:`lut4_group` writes the inner loop of one group directly in LLVM IR:

for every column ``j`` of the group, the 16 products ``P[c] = fl32(table[c] · x_j)`` are formed
once in a register, then the codes of the tile's rows (:mod:`mmquant.products.tiles`: ``H`` bytes,
two rows per byte) are loaded as a vector, split into nibbles, and ``P[code]`` is picked for every
row with a variable permute (AVX-512 ``vpermps`` over 16 lanes, or two AVX2 ``vpermps`` over 8
lanes and a select on bit 3) and added to the row's float32 accumulator. Each row's sum is
therefore ``Σ_j fl32(table[c_j] · x_j)`` added in increasing ``j`` from ``+0.0`` -- the order of
the numpy reference (:mod:`mmquant.products.reference`), bit for bit; no multiply–add is fused.

:func:`simd_width` says which variant the CPU numba compiles for can run (16, 8, or 0 for none:
the kernels then use their plain-numba loops). Importing this module compiles nothing.
"""

from __future__ import annotations

import functools

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "simd_width",
    "lut4_group16",
    "lut4_group16x4",
    "lut4_group8",
    "lut4_group8x4",
    "TILE",
    "TB",
]

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
                for s in range(tb):
                    xj = builder.load(builder.gep(xrows[s], [jj]))
                    xs = builder.shuffle_vector(
                        builder.insert_element(undef, xj, ir.Constant(i32, 0)), undef, splat
                    )
                    prods = [builder.fmul(p, xs) for p in parts]
                    for q in range(chunks):
                        for h in range(2):  # low nibbles: rows vec·q.., high: H + vec·q..
                            nib, up = idx[2 * q + h]
                            slot = accs[s][h * chunks + q]
                            val = look(prods, nib, up)
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
