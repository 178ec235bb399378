"""The row-tiled layout and its SIMD look-up kernels: every variant bit-exact with the numpy
reference, the integer codes × codes path exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mmquant as mq
from mmquant.packing import unpack
from mmquant.products import product, reference, times
from mmquant.products.records import block_view
from mmquant.products.tiles import (
    TILE,
    integer_base,
    minifloat_fields,
    nibble_codes,
    signed_step,
    tile_view,
)

kp = pytest.importorskip("mmquant.kernels.products")
simd = kp

VARIANTS = [w for w in (0, 8, 16) if w <= simd.simd_width()]


def test_tile_constants_agree():
    assert simd.TILE == TILE and TILE % 32 == 0


def test_integer_base():
    assert integer_base(np.arange(16, dtype=np.float32) - 8) == -8.0
    assert integer_base(np.arange(256, dtype=np.float32)) == 0.0
    assert integer_base(np.arange(16, dtype=np.float32) * 0.5) is None
    assert integer_base(np.arange(16, dtype=np.float32) + 0.5) is None


def test_signed_step():
    signed = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)
    assert signed_step(signed / 64) == 1 / 64
    assert signed_step(signed * 0.3) is None  # not a power of two
    assert signed_step(np.arange(256, dtype=np.float32)) is None
    assert signed_step(signed[:16]) is None


def test_minifloat_fields():
    from mmquant.formats.minifloat import FORMATS, decode_elements

    for name in ("e4m3", "e5m2", "e2m3", "e3m2", "e2m1"):
        fmt = FORMATS[name]
        width = 1 + fmt.ebits + fmt.mbits
        table = decode_elements(np.arange(2**width), fmt).astype(np.float32)
        got = minifloat_fields(table, width)
        assert got == (width - 1, 2 ** (width - 1) - 1, 23 - fmt.mbits, 2.0 ** (127 - fmt.bias))
    assert minifloat_fields(np.arange(256, dtype=np.float32) - 127, 8) is None
    assert minifloat_fields(np.linspace(-1, 1, 16, dtype=np.float32), 4) is None
    assert minifloat_fields(np.zeros(256, np.float32), 8) is None
    assert minifloat_fields(np.zeros(3, np.float32), 8) is None


def test_wide_scales_take_several_registers():
    # rows spanning 2^±8: NVFP4 block scales with many distinct values (several SIMD registers
    # of the scale table), MX exponents with more than 16
    rng = np.random.default_rng(5)
    rows, n = 2 * TILE + 3, 96
    w = rng.standard_normal((rows, n)) * np.exp2(np.linspace(-8, 8, rows))[:, None]
    x = rng.standard_normal((4, n)).astype(np.float32)
    for spec, least in (("nvfp4", 33), ("mxfp8", 17)):
        v = block_view(mq.get(spec).encode(w.astype(np.float32)))
        tv = tile_view(v, index_scales=True)
        assert tv.indexed and tv.scale_count >= least, (spec, tv.scale_count)
        assert not tile_view(v).indexed  # float32 scales by default
        for b in (1, 4):
            u = np.ones((b, v.scale.shape[1]))
            want = reference.block_product(v, x[:b], u, None)
            for width in VARIANTS:
                got = kp.block_product(tv, x[:b], u, None, simd=width)
                assert got.tobytes() == want.tobytes(), (spec, width, b)


def test_nan_codes_are_refused_before_the_kernels():
    w = np.random.default_rng(6).standard_normal((4, 32)).astype(np.float32)
    enc = mq.get("mxfp8:elem=e5m2").encode(w)
    codes = enc.codes.copy()
    codes[3] = 0x7F  # E5M2 NaN
    v = block_view(dataclasses.replace(enc, codes=codes))
    with pytest.raises(ValueError, match="not finite"):
        tile_view(v)


def test_tile_layout_holds_every_code():
    rng = np.random.default_rng(0)
    for spec, n in (("nf4", 40), ("nf4", 41), ("int:bits=8", 40), ("int:bits=3,group=8", 40)):
        w = rng.standard_normal((TILE + 5, n)).astype(np.float32)
        v = block_view(mq.get(spec).encode(w))
        tv = tile_view(v)
        codes = unpack(v.codes, v.width, v.rows * v.n).reshape(v.rows, v.n)
        back = np.zeros((2 * TILE, v.n), np.uint8)
        if tv.nibbles:
            back = nibble_codes(tv)
            # the pair layout, read directly: row 16q + l, column j in bits 16(j mod 2) + 4q
            words = tv.codes.reshape(2, -1, 16, 4).astype(np.uint32)
            words = words[..., 0] | words[..., 1] << 8 | words[..., 2] << 16 | words[..., 3] << 24
            for j in (0, 1, v.n - 1):
                for q in range(4):
                    got = (words[:, j // 2] >> (16 * (j % 2) + 4 * q)) & 15
                    np.testing.assert_array_equal(
                        got.reshape(-1), back.reshape(2, 4, 16, -1)[:, q, :, j].reshape(-1)
                    )
        else:
            back = tv.codes.reshape(2, v.n, TILE).transpose(0, 2, 1).reshape(-1, v.n)
        np.testing.assert_array_equal(back[: v.rows], codes)
        assert not back[v.rows :].any()
        np.testing.assert_array_equal(tv.scales()[0].T, v.scale[:TILE])
        ti = tile_view(v, index_scales=True)
        np.testing.assert_array_equal(ti.scales()[0].T, v.scale[:TILE])


@pytest.mark.parametrize(
    "spec",
    [
        "int:bits=4,group=32",
        "nf4",
        "mxfp4",
        "nvfp4",
        "fp:fmt=e2m1",
        "int:bits=4,affine=true,group=24",
        "lloydmax:bits=4",
        "mxint8",
        "int:bits=8",
        "int:bits=4,group=8",
        "int:bits=4,group=7",  # groups from odd columns: the pair layout read one at a time
        "int:bits=5,group=0",
        "fp:fmt=e4m3",
        "fp:fmt=e5m2",
        "mxfp6",
        "mxfp6:elem=e3m2",
        "mxfp8:elem=e5m2",
        "lloydmax:bits=8",
    ],
)
@pytest.mark.parametrize("batch", [1, 3, 6])
def test_every_simd_variant_is_bit_exact(spec, batch):
    rng = np.random.default_rng(1)
    rows, n = 2 * TILE + 9, 71  # 3 tiles (a pair and one alone), the last partial; a partial
    # last group, an odd last column
    w = rng.standard_normal((rows, n)).astype(np.float32)
    x = rng.standard_normal((batch, n)).astype(np.float32)
    v = block_view(mq.get(spec).encode(w))
    u = np.ones((batch, v.scale.shape[1]))
    vsum = None if v.offset is None else reference.activation_sums(x, v.group)
    want = reference.block_product(v, x, u, vsum)
    tv = tile_view(v)
    assert tv.compact  # every record here has scales exact in half precision
    # half-precision scales (the default), float32 ones, uint8 indices where a record allows
    layouts = [tv, tile_view(v, compact=False), tile_view(v, index_scales=True)]
    for i, tvi in enumerate(layouts):
        for width in VARIANTS:
            got = kp.block_product(tvi, x, u, vsum, simd=width)
            assert got.tobytes() == want.tobytes(), (spec, width, i)
    # activation group scales other than 1 (codes × codes): the kernels' general epilogue
    u2 = rng.uniform(0.5, 2.0, u.shape)
    want2 = reference.block_product(v, x, u2, vsum)
    for tvi in layouts[:2]:
        for width in VARIANTS:
            got = kp.block_product(tvi, x, u2, vsum, simd=width)
            assert got.tobytes() == want2.tobytes(), (spec, width, "u", tvi.compact)
    with pytest.raises(ValueError, match="not available"):
        kp.block_product(tv, x, u, vsum, simd=32)


@pytest.mark.parametrize("spec", ["int:bits=4", "int:bits=4,affine=true", "nvfp4", "fp:fmt=e4m3"])
def test_compact_scales_are_the_float32_ones(spec):
    """Half-precision scales widen to the very float32 scales: subnormal halves (tiny rows),
    NVFP4's tensor scale as the factor; a record whose scales are not exact keeps float32."""
    rng = np.random.default_rng(7)
    rows, n = TILE + 5, 96
    w = rng.standard_normal((rows, n)) * np.logspace(-4, 3, rows)[:, None]  # subnormal halves
    x = rng.standard_normal((2, n)).astype(np.float32)
    v = block_view(mq.get(spec).encode(w.astype(np.float32)))
    tv = tile_view(v)
    assert tv.compact and tv.nbytes < tile_view(v, compact=False).nbytes
    assert (tv.scale_unit != 1) == (spec == "nvfp4")
    assert spec == "nvfp4" or v.scale.min() < 2.0**-14  # the smallest normal half
    back = tv.scales().transpose(0, 2, 1).reshape(-1, v.scale.shape[1])  # (tiles·TILE, groups)
    np.testing.assert_array_equal(back[:rows], v.scale)
    u = np.ones((2, v.scale.shape[1]))
    for b in (1, 2):
        vsum = None if v.offset is None else reference.activation_sums(x[:b], v.group)
        want = reference.block_product(v, x[:b], u[:b], vsum)
        for width in VARIANTS:
            got = kp.block_product(tv, x[:b], u[:b], vsum, simd=width)
            assert got.tobytes() == want.tobytes(), (spec, b, width)
    # a scale with no half-precision twin (1/3 in float32): the float32 layout, the same bits
    odd = dataclasses.replace(v, scale=v.scale * np.float32(1 / 3))
    assert not tile_view(odd).compact
    want = reference.block_product(odd, x[:1], u[:1], None if v.offset is None else vsum[:1])
    got = kp.block_product(tile_view(odd), x[:1], u[:1], None if v.offset is None else vsum[:1])
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("bits, group", [(4, 32), (8, 16), (4, 0)])
def test_integer_codes_times_codes_is_exact(bits, group):
    rng = np.random.default_rng(2)
    spec = f"int:bits={bits},group={group}"
    q = mq.get(spec)
    w, a = rng.standard_normal((37, 96)), rng.standard_normal((2, 96))
    ew, ea = q.encode(w), q.encode(a)
    vw, va = block_view(ew), block_view(ea)
    # the exact product of the decoded values: integer group dots, scaled once per group
    cw = vw.table[unpack(vw.codes, bits, 37 * 96)].reshape(37, -1, vw.group).astype(np.int64)
    ca = va.table[unpack(va.codes, bits, 2 * 96)].reshape(2, -1, va.group).astype(np.int64)
    dots = np.einsum("ikj,tkj->itk", cw, ca).astype(np.float64)
    terms = vw.scale.astype(np.float64)[:, None, :] * va.scale.astype(np.float64)[None] * dots
    want = np.cumsum(terms, axis=2)[:, :, -1] + 0.0
    for backend in ("numpy", "numba"):
        got = product(ew, ea, backend=backend)
        assert got.tobytes() == want.tobytes(), backend
        assert product(ea, ew, backend=backend).T.tobytes() == want.tobytes()
    decoded = q.decode(ew).astype(np.float64) @ q.decode(ea).astype(np.float64).T
    np.testing.assert_allclose(want, decoded, rtol=1e-5, atol=1e-5)


def test_other_activations_are_decoded():
    rng = np.random.default_rng(3)
    w, a = rng.standard_normal((9, 64)), rng.standard_normal((2, 64))
    ew = mq.get("int:bits=4,group=32").encode(w)
    for spec in ("int:bits=4,group=16", "int:bits=4,affine=true,group=32", "nf4:group=32"):
        qa = mq.get(spec)
        ea = qa.encode(a)
        want = times(ew, qa.decode(ea).T)
        for backend in ("numpy", "numba"):
            assert product(ew, ea, backend=backend).tobytes() == want.tobytes(), spec


def test_activation_sums_match_the_reference():
    # the kernels' group sums of the activations (affine records): the reference's bits,
    # partial last groups and sums that cancel to zero included
    rng = np.random.default_rng(7)
    for (b, n), g in (((1, 64), 32), ((3, 71), 24), ((2, 5), 7), ((1, 0), 4)):
        x = (rng.standard_normal((b, n)) * 10.0 ** rng.integers(-3, 4, (b, n))).astype(np.float32)
        if n >= 2:
            x[:, 1] = -x[:, 0]
        want = reference.activation_sums(x, g)
        got = kp.activation_sums(x, g)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (b, n, g)


def test_small_products_run_on_one_thread_and_restore_the_count():
    """Below SERIAL_BELOW terms the kernels run on the calling thread (the same numbers) and the
    thread count is restored, also after an error."""
    import numba

    rng = np.random.default_rng(8)
    v = block_view(mq.get("int:bits=4").encode(rng.standard_normal((TILE * 3, 256))))
    tv = tile_view(v)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    u = np.ones((2, v.scale.shape[1]))
    want = reference.block_product(v, x, u, None)
    before = numba.get_num_threads()
    seen = []
    with kp.few_threads(0):
        seen.append(numba.get_num_threads())
        got = kp.block_product(tv, x, u, None)
    assert seen == [1] and numba.get_num_threads() == before
    assert got.tobytes() == want.tobytes()
    with pytest.raises(RuntimeError), kp.few_threads(0):
        raise RuntimeError
    assert numba.get_num_threads() == before
    with kp.few_threads(kp.SERIAL_BELOW):
        assert numba.get_num_threads() == before
