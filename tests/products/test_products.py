"""Products straight from the codes: equal to decode-then-multiply, numpy and numba bit-exact,
hostile records refused before any kernel reads them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mmquant as mq
from mmquant.core import Encoded
from mmquant.products import has_kernel, linear, product, times

BLOCK_SPECS = [
    "int:bits=4,group=32",
    "int:bits=3,group=7",
    "int:bits=4,affine=true",
    "int:bits=8,group=-1",
    "int:bits=5,group=0",
    "fp:fmt=e2m1",
    "fp:fmt=e3m2,group=5",
    "fp:fmt=e4m3",
    "mxfp4",
    "mxfp6",
    "mxfp8:elem=e5m2",
    "mxint8",
    "nvfp4",
    "nf4",
    "nf4:group=0",
    "compander:bits=3",
    "lloydmax:bits=4",
    "uniform:bits=2",
    "datacompander:bits=4",
]
LATTICE_SPECS = ["e8", "e8:group=32", "d4:center=true", "zn:betas=1", "e8:dither=true"]


def _check(spec: str, shape: tuple[int, int], batch: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((shape[1], batch)).astype(np.float32)
    q = mq.get(spec)
    enc = q.encode(w)
    assert has_kernel(enc)
    w_hat = q.decode(enc).astype(np.float64)
    ref = w_hat @ x.astype(np.float64)
    a = times(enc, x, backend="numpy")
    b = times(enc, x, backend="numba")
    assert a.shape == b.shape == (shape[0], batch)
    assert a.tobytes() == b.tobytes(), f"{spec}: numpy and numba differ"
    # float32 accumulation error: a few ulps of Σ|ŵ||x| per entry
    bound = 8 * np.finfo(np.float32).eps * (np.abs(w_hat) @ np.abs(x.astype(np.float64)))
    assert np.all(np.abs(a - ref) <= bound + 1e-30), spec


@pytest.mark.parametrize("spec", BLOCK_SPECS + LATTICE_SPECS)
def test_every_family_odd_sizes(spec):
    for shape, batch in (((37, 75), 1), ((37, 75), 3), ((5, 9), 2)):
        _check(spec, shape, batch)


@pytest.mark.parametrize("spec", ["int:bits=4,group=32", "mxfp4", "nf4", "mxint8", "fp:fmt=e4m3"])
def test_gemv_fast_paths(spec):
    # batch 1, groups dividing an even row: the 4-bit and 8-bit single-vector kernels
    _check(spec, (16, 128), 1, seed=3)
    _check("int:bits=4,affine=true", (16, 128), 1, seed=4)


@pytest.mark.parametrize("spec", ["int:bits=4,affine=true", "nvfp4", "fp:fmt=e4m3", "mxint8"])
def test_one_activation_plan_matches_the_general_path(spec):
    """The lean GEMV path (a plan bound to the weight) gives the general path's numbers for
    every layout of one activation, and its failures name the activation or the record."""
    pytest.importorskip("numba")
    import mmquant.products as products

    rng = np.random.default_rng(6)
    enc = mq.get(spec).encode(rng.standard_normal((70, 96)).astype(np.float32))
    x = rng.standard_normal(96)
    want = times(enc, x.tolist(), backend="numba")  # a list: the general path
    np.testing.assert_array_equal(times(enc, x, backend="numpy"), want)  # makes no plan
    assert enc not in products._PLANS
    np.testing.assert_array_equal(times(enc, x, backend="numba"), want)
    assert products._PLANS[enc] is not False  # the plan was made and used
    x32 = x.astype(np.float32)
    for got in (times(enc, x32), times(enc, x[:, None])[:, 0], times(enc, x[::-1][::-1])):
        np.testing.assert_array_equal(got, want)
    for xs in (x32[None], x32, x32[None, None]):
        lin = linear(xs, enc)
        assert lin.shape == (*xs.shape[:-1], 70) and lin.dtype == np.float32
        np.testing.assert_array_equal(lin.reshape(-1), want.astype(np.float32))
    for bad, msg in ((np.nan, "1 NaN"), (-np.inf, "1 Inf")):
        xb = x.copy()
        xb[5] = bad
        with pytest.raises(ValueError, match=msg):
            times(enc, xb)
    with pytest.raises(ValueError, match="not finite"):  # finite float64, infinite as float32
        times(enc, np.where(np.arange(96) == 7, 1e39, x))


def test_vector_and_linear_shapes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 40)).astype(np.float32)
    q = mq.get("int:bits=4,group=8")
    enc = q.encode(w)
    x = rng.standard_normal(40).astype(np.float32)
    y = times(enc, x)
    assert y.shape == (12,)
    np.testing.assert_allclose(y, q.decode(enc) @ x, rtol=1e-5, atol=1e-5)
    xs = rng.standard_normal((2, 3, 40)).astype(np.float32)
    out = linear(xs, enc)
    assert out.shape == (2, 3, 12) and out.dtype == np.float32
    np.testing.assert_allclose(out, xs @ q.decode(enc).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "spec_a, spec_b",
    [("int:bits=4,group=32", "int:bits=4,group=32"), ("mxfp4", "int:bits=8"), ("e8", "nvfp4")],
)
def test_codes_times_codes(spec_a, spec_b):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((64, 21)), rng.standard_normal((64, 2))
    ea, eb = mq.get(spec_a).encode(a.T), mq.get(spec_b).encode(b.T)
    want = mq.get(spec_a).decode(ea).astype(np.float64) @ mq.get(spec_b).decode(eb).T
    for got in (product(ea, eb), mq.matmul(ea, eb), product(eb, ea).T):
        assert got.shape == (21, 2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_matmul_keeps_the_decode_path_for_other_families():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((64, 3)), rng.standard_normal((64, 5))
    q = mq.get("timeshare")
    ea, eb = q.encode(a.T), q.encode(b.T)
    assert not has_kernel(ea)
    np.testing.assert_array_equal(mq.matmul(ea, eb), q.decode(ea) @ q.decode(eb).T)
    with pytest.raises(ValueError, match="no product from the codes"):
        times(ea, b[:, 0])


def _replace(enc: Encoded, **kw) -> Encoded:
    return dataclasses.replace(enc, **kw)


def test_hostile_records_are_refused():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    x = rng.standard_normal(64)
    enc = mq.get("int:bits=4,group=32").encode(w)
    with pytest.raises(ValueError, match="codes"):
        times(_replace(enc, codes=enc.codes[:-1]), x)
    side = dict(enc.side)
    side["absmax"] = side["absmax"].copy()
    side["absmax"][0, 0] = np.nan
    with pytest.raises(ValueError, match="corrupt side information"):
        times(_replace(enc, side=side), x)
    with pytest.raises(ValueError, match="shape"):
        times(_replace(enc, side={"absmax": enc.side["absmax"][:4]}), x)
    mx = mq.get("mxfp4").encode(w)
    with pytest.raises(ValueError, match="255"):
        times(_replace(mx, side={"e8m0": np.full_like(mx.side["e8m0"], 255)}), x)
    nv = mq.get("nvfp4").encode(w)
    bad = dict(nv.side, block_scale=np.full_like(nv.side["block_scale"], 0x7F))
    with pytest.raises(ValueError, match="E4M3"):
        times(_replace(nv, side=bad), x)
    fp8 = mq.get("fp:fmt=e4m3").encode(w)  # 0x7F is NaN in E4M3: never written by the encoder
    with pytest.raises(ValueError, match="not finite"):
        times(_replace(fp8, codes=np.full_like(fp8.codes, 0x7F)), x)
    e8 = mq.get("e8").encode(w)
    with pytest.raises(ValueError):
        times(_replace(e8, codes=e8.codes[:-3]), x)
    with pytest.raises(ValueError, match="betas"):
        times(_replace(e8, side=dict(e8.side, betas=-e8.side["betas"])), x)


def test_bad_arguments():
    rng = np.random.default_rng(5)
    enc = mq.get("nf4").encode(rng.standard_normal((4, 16)))
    with pytest.raises(TypeError):
        times(np.zeros((4, 16)), np.zeros(16))
    with pytest.raises(ValueError, match="expected"):
        times(enc, np.zeros(15))
    with pytest.raises(ValueError):
        times(enc, np.full(16, np.nan))
    with pytest.raises(ValueError, match="last axis"):
        linear(np.zeros((2, 15)), enc)
    with pytest.raises(ValueError, match="2-D"):
        times(mq.get("nf4").encode(rng.standard_normal((2, 2, 16))), np.zeros(16))
    with pytest.raises(ValueError, match="inner dimensions"):
        product(enc, mq.get("nf4").encode(rng.standard_normal((4, 8))))


@pytest.mark.parametrize("b,n,g", [(1, 4096, 32), (16, 300, 32), (3, 1001, 7), (2, 100, 256)])
def test_activation_sums_are_the_group_sums_of_ones(b, n, g):
    """Step 2 of the contract: the batched sums equal :func:`group_sums` with ``vals`` ones."""
    from mmquant.products import reference

    x = (np.random.default_rng(b * n + g).standard_normal((b, n)) * 37.0).astype(np.float32)
    ones = np.ones(n, np.float32)
    want = np.stack([reference.group_sums(x[t][None], ones, g)[0] for t in range(b)])
    got = reference.activation_sums(x, g)
    assert got.dtype == np.float64 and got.shape == (b, -(-n // g))
    np.testing.assert_array_equal(got, want.astype(np.float64))
