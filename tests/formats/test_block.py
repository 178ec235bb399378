import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import mmquant as mq
from mmquant.formats.block import MX_ELEMENTS, MXFP6, MXFP8, NVFP4, mx_decode, mx_encode
from mmquant.formats.minifloat import FORMATS

MX_SPECS = ["mxfp4", "mxfp6", "mxfp6:elem=e3m2", "mxfp8", "mxfp8:elem=e5m2", "mxint8"]


def _mx_reference(x, elem):
    """Independent MX reference: ml_dtypes rounding, explicit saturation, float64 scale."""
    el = MX_ELEMENTS[elem]
    b = x.reshape(x.shape[0], -1, 32).astype(np.float64)
    amax = np.abs(b).max(-1, keepdims=True)
    e = np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - el.emax
    e = np.where(amax > 0, e, -127)
    X = 2.0**e
    t = (b / X).astype(np.float32)
    if el.fp is None:
        y = np.clip(np.rint(t * 64), -127, 127) / 64
    else:
        f = FORMATS[el.fp]
        t = np.clip(t, -f.max_normal, f.max_normal)
        y = t.astype(getattr(ml_dtypes, f.ml_dtype)).astype(np.float64)
    return (y * X).reshape(x.shape), (e + 127).astype(np.uint8).reshape(x.shape[0], -1)


@pytest.mark.parametrize("spec", MX_SPECS)
def test_mx_matches_reference(spec):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)) * np.exp2(rng.integers(-20, 20, (64, 1)))
    x[3, :32] = 0.0  # an all-zero block
    x[5, 40] = 1e4  # an outlier that saturates its block
    x = x.astype(np.float32)
    q = mq.get(spec)
    enc = q.encode(x)
    want, scale = _mx_reference(x, q.element.name)
    assert np.array_equal(enc.side["e8m0"], scale)
    assert np.array_equal(q.decode(enc), want.astype(np.float32))


def test_nvfp4_matches_reference():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((32, 128)) * np.exp2(rng.integers(-6, 6, (32, 1)))).astype(np.float32)
    enc = NVFP4().encode(x)
    amax_t = float(np.abs(x).max())
    s_t = np.float32(amax_t / 2688)
    b = x.reshape(32, -1, 16)
    amax = np.abs(b).max(-1).astype(np.float64)
    bs = (amax / (6 * float(s_t))).astype(ml_dtypes.float8_e4m3fn)
    S = bs.astype(np.float32) * s_t
    y = np.clip(b / S[..., None], -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    assert enc.side["tensor_scale"][0] == s_t
    assert np.array_equal(enc.side["block_scale"], bs.view(np.uint8))
    assert np.array_equal(NVFP4().decode(enc), (y * S[..., None]).reshape(x.shape))


@pytest.mark.parametrize(
    ("spec", "rate"),
    [
        ("mxfp4", 4.25),
        ("mxfp6", 6.25),
        ("mxfp6:elem=e3m2", 6.25),
        ("mxfp8", 8.25),
        ("mxfp8:elem=e5m2", 8.25),
        ("mxint8", 8.25),
        ("nvfp4", 4.5 + 32 / (64 * 256)),
    ],
)
def test_measured_rates(spec, rate):
    x = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    q = mq.get(spec)
    enc = q.encode(x)
    assert enc.bits_per_entry == pytest.approx(rate, abs=1e-12)
    assert all(v.dtype in (np.uint8, np.float32) for v in enc.side.values())
    assert mq.get(q.spec) == q


@pytest.mark.parametrize(("spec", "eps"), [("mxfp4", 1.322e-2), ("nvfp4", 9.05e-3)])
def test_relative_mse_matches_theory(spec, eps):
    # THEORY.md §4 (computed values, 2%), 2^20 iid N(0, 1) entries
    x = np.random.default_rng(3).standard_normal((1024, 1024)).astype(np.float32)
    got = float(np.mean((mq.get(spec).quantize(x) - x) ** 2) / np.var(x))
    assert got == pytest.approx(eps, rel=0.02)


def test_short_last_block_and_shapes():
    x = np.random.default_rng(4).standard_normal((2, 3, 45))
    for spec in [*MX_SPECS, "nvfp4"]:
        q = mq.get(spec)
        enc = q.encode(x)
        xh = q.decode(enc)
        assert xh.shape == x.shape and xh.dtype == np.float32
        assert np.abs(xh - x).max() <= np.abs(x).max()
    enc = mq.get("mxfp4").encode(x)
    assert enc.side["e8m0"].shape == (6, 2)
    assert enc.code_bytes == 4 * -(-x.size // 8)


def test_zero_and_tiny_inputs():
    for spec in [*MX_SPECS, "nvfp4"]:
        q = mq.get(spec)
        z = np.zeros((2, 32), np.float32)
        assert np.array_equal(q.quantize(z), z)
        t = np.full((1, 32), 1e-42, np.float32)  # float32 subnormals
        assert np.all(np.abs(q.quantize(t) - t) <= 1e-42)
    assert mq.get("mxfp4").encode(np.zeros((1, 32))).side["e8m0"][0, 0] == 0


@pytest.mark.parametrize("spec", MX_SPECS)
def test_mx_values_near_the_float32_maximum(spec):
    """Every float32 encodes: E ≤ 127 − emax keeps the decoded values finite (scale-invariant)."""
    q = mq.get(spec)
    x = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    x[:, 0] = np.float32(np.finfo(np.float32).max) * np.sign(x[:, 0])
    x[:, 1:] *= np.float32(2.0**125)
    xh = q.quantize(x)
    assert np.isfinite(xh).all()
    # the same codes as for the data scaled down by 2^100 (E8M0 scales are exact powers of two)
    small = q.quantize((x.astype(np.float64) * 2.0**-100).astype(np.float32))
    assert np.array_equal(xh.astype(np.float64) * 2.0**-100, small.astype(np.float64))
    # float64 beyond the float32 range cannot be decoded: a clear error
    with pytest.raises(ValueError, match="2\\^128"):
        q.encode(np.full((1, 32), 1e39))
    assert np.isfinite(q.quantize(np.full((1, 32), 3.4e38))).all()  # float64 just below 2^128


def test_bad_parameters():
    with pytest.raises(ValueError, match="elem"):
        MXFP6(elem="e4m3")
    with pytest.raises(ValueError, match="elem"):
        MXFP8(elem="e2m1")
    with pytest.raises(ValueError, match="elem"):
        mq.get("mxfp8:elem=int8")


def test_variants():
    assert [q.spec for q in mq.registry()["mxfp6"].variants()] == ["mxfp6", "mxfp6:elem=e3m2"]
    assert [q.spec for q in mq.registry()["mxfp8"].variants(8.0)] == ["mxfp8", "mxfp8:elem=e5m2"]
    assert [q.spec for q in NVFP4.variants(4.0)] == ["nvfp4"]
    assert mq.registry()["mxfp4"].variants(8.0) == []


def test_e8m0_exponents():
    # block amax 1.0 -> floor(log2) = 0 -> E = -emax; amax 0.75 -> -1 - emax
    for elem, spec in [("e2m1", "mxfp4"), ("e4m3", "mxfp8"), ("int8", "mxint8")]:
        x = np.array([[1.0] + [0.1] * 31, [0.75] + [0.1] * 31])
        _, s = mx_encode(x, elem)
        emax = MX_ELEMENTS[elem].emax
        assert s.ravel().tolist() == [127 - emax, 126 - emax]
        assert mq.get(spec).element.emax == emax


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 70)),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    spec=st.sampled_from([*MX_SPECS, "nvfp4"]),
)
def test_properties(x, spec):
    q = mq.get(spec)
    enc = q.encode(x)
    assert enc.bits_per_entry == 8 * enc.nbytes / x.size
    assert enc.nbytes == enc.codes.nbytes + sum(v.nbytes for v in enc.side.values())
    xh = q.decode(enc)
    assert np.all(np.abs(xh.astype(np.float64) - x) <= np.abs(x).max() * (1 + 1e-6))
    if spec != "nvfp4":  # power-of-two scales: quantization is idempotent
        assert np.array_equal(q.quantize(xh), xh)
        codes, scale = mx_encode(x, q.element.name)
        assert np.array_equal(mx_decode(codes, scale, q.element.name), xh)
        # inside the element range: within half an element step (times the block scale)
        el = q.element
        n = x.shape[-1]
        X = np.repeat(np.exp2(scale.astype(np.float64) - 127), 32, axis=1)[:, :n]
        t = np.abs(x.astype(np.float64)) / X
        if el.fp is None:
            step, top = np.full_like(t, 1 / 64), 127 / 64
        else:
            f = FORMATS[el.fp]
            e = np.floor(np.log2(np.maximum(t, 2.0**-200)))
            step, top = np.exp2(np.maximum(e, f.emin) - f.mbits), f.max_normal
        inside = t <= top
        assert np.all(np.abs(xh - x)[inside] <= (step * X)[inside] / 2)
