"""Tests of mmquant/layout.py: the declared layouts and the shared record checks."""

import numpy as np
import pytest

import mmquant as mq
from mmquant.core import Encoded
from mmquant.layout import (
    MAX_ENTRIES_PER_BYTE,
    MAX_NDIM,
    Layout,
    check_layout,
    check_shape,
    check_size,
    side_array,
)

# every configuration whose records differ in layout: the compare defaults and the options
# that add, drop or resize side arrays or change the code length
LAYOUT_SPECS = [
    "int",
    "int:bits=3,group=5,affine=true",
    "int:group=0,scale_dtype=float32",
    "int:group=-1,bits=8",
    "fp:fmt=e2m1",
    "fp:fmt=e5m2,group=0",
    "fp:group=-1,scale_dtype=float32",
    "mxfp4",
    "mxfp6:elem=e3m2",
    "mxfp8:elem=e5m2",
    "mxint8",
    "nvfp4",
    "nf4",
    "nf4:group=-1,scale_dtype=float32",
    "compander:bits=1",
    "lloydmax:bits=3",
    "uniform:bits=8,scale_dtype=float32",
    "datacompander:bits=2",
    "e8:betas=0.2;0.35;0.5",
    "e8:q=2,betas=1",
    "d4:q=16,betas=0.3;0.6,center=true,dither=true",
    "zn:q=7,betas=0.1;0.2;0.3;0.4;0.5",
    "e8:q=14;15;13,betas=0.2;0.3;0.4",
    "e8:q=5,betas=2,mixed=true,fit=true",
    "e8:q=6,betas=3,group=4,fit=true",
    "e8ec:rate=2,center=true,dither=false",
    "e8ec",
    "timeshare",
    "timeshare:rate=0.0078125",
    "tcq:L=8",
    "tcq:bits=2,L=10,V=2,code=3inst",
    "tcqec:L=4,rate=2.5",
]
SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (4, 64), (1, 129), (5, 33)]
# weight-only families: (a, n) matrices only (Σ_X = I when encode gets no sigma)
WEIGHT_ONLY_SPECS = [
    "rtn",
    "rtn:grid=int,bits=3,group=7",
    "gptq",
    "gptq:rotate=true,seed=3",
    "gptq:grid=int,bits=5",
    "watersic",
    "watersic:rescale=both,rate=2",
    "watersic:rescale=none,lmmse=false,step=0.5",
    "e8sic",
    "e8sic:rate=3,rotate=true",
    "tcqsic",
    "tcqsic:rate=3,L=5,rotate=true",
]


def test_every_registered_family_declares_a_layout():
    for name, cls in mq.registry().items():
        q = cls.variants()[0] if cls.variants() else cls()
        lay = q.layout((4, 40))
        assert isinstance(lay, Layout), f"{name} declares no layout"


def test_the_layout_specs_cover_every_family():
    assert {mq.get(s).name for s in LAYOUT_SPECS + WEIGHT_ONLY_SPECS} == set(mq.available())


@pytest.mark.parametrize("spec", WEIGHT_ONLY_SPECS)
def test_weight_only_encoders_write_their_declared_layout(spec):
    q = mq.get(spec)
    rng = np.random.default_rng(len(spec))
    for shape in [(16, 64), (24, 33), (1, 2)]:  # (1, 2) only at a fixed step or width
        if shape == (1, 2) and q.rate is not None:
            continue
        for x in (rng.standard_normal(shape).astype(np.float32), np.zeros(shape)):
            enc = q.encode(x)
            check_layout(enc, q.layout(enc.shape), q.spec)
            q.check(enc)
    sigma = np.eye(40)
    sigma[5, 5] = 0.0  # a dead input: the record stores the live mask
    enc = q.encode(rng.standard_normal((30, 40)), sigma=sigma)
    assert "live" in enc.side
    q.check(enc)


def test_optional_side_arrays_may_be_absent_but_not_wrong():
    lay = Layout(
        0, {"a": side_array("uint8", 2), "b": side_array("float16", 3)}, optional=frozenset({"b"})
    )
    codes = np.zeros(0, np.uint8)
    check_layout(Encoded(codes, {"a": np.zeros(2, np.uint8)}, (4,), "s"), lay, "s")
    both = {"a": np.zeros(2, np.uint8), "b": np.zeros(3, np.float16)}
    check_layout(Encoded(codes, both, (4,), "s"), lay, "s")
    with pytest.raises(ValueError, match=r"'b' is float16 \(4,\)"):
        check_layout(Encoded(codes, {**both, "b": np.zeros(4, np.float16)}, (4,), "s"), lay, "s")
    with pytest.raises(ValueError, match="missing 'a'"):
        check_layout(Encoded(codes, {"b": both["b"]}, (4,), "s"), lay, "s")


@pytest.mark.parametrize("spec", LAYOUT_SPECS)
def test_encoders_write_exactly_their_declared_layout(spec):
    """Every record an encoder writes fits its layout (codes, side arrays, dtypes, seed)."""
    q = mq.get(spec)
    rng = np.random.default_rng(len(spec))
    for shape in SHAPES:
        for x in (rng.standard_normal(shape).astype(np.float32), np.zeros(shape)):
            enc = q.encode(x)
            lay = q.layout(enc.shape)
            check_layout(enc, lay, q.spec)
            if isinstance(lay.codes, int):
                assert enc.codes.size == lay.codes
            q.check(enc)


def test_check_shape():
    assert check_shape((3, 4)) == 12
    assert check_shape((2**40, 2**40)) == 2**80  # exact, no int64 overflow
    for bad in ((), (0, 4), (3, -1), (2.5,), (True, 3), [3, 4], (1,) * (MAX_NDIM + 1)):
        with pytest.raises(ValueError, match="shape"):
            check_shape(bad)


def test_size_rule():
    check_size(MAX_ENTRIES_PER_BYTE * 10, 10)
    with pytest.raises(ValueError, match="entries per stored byte"):
        check_size(MAX_ENTRIES_PER_BYTE * 10 + 1, 10)
    with pytest.raises(ValueError, match="entries per stored byte"):
        check_size(MAX_ENTRIES_PER_BYTE + 1, 0)


def test_layout_messages_name_array_expected_and_found():
    lay = Layout(8, {"scale": side_array("float16", 2, 3)}, seed=None)
    good = Encoded(np.zeros(8, np.uint8), {"scale": np.zeros((2, 3), np.float16)}, (4, 4), "s")
    check_layout(good, lay, "s")
    cases = [
        (good.codes[:3], good.side, None, r"codes hold 3 bytes; 's' stores exactly 8 bytes"),
        (good.codes, {}, None, r"missing 'scale'"),
        (good.codes, {**good.side, "x": np.zeros(1)}, None, r"unexpected 'x'"),
        (
            good.codes,
            {"scale": np.zeros((2, 3), np.float32)},
            None,
            r"'scale' is float32 \(2, 3\); 's' stores float16 \(2, 3\)",
        ),
        (good.codes, {"scale": np.zeros(6, np.float16)}, None, r"'scale' is float16 \(6,\)"),
        (good.codes, good.side, 7, r"seed 7 differs from the seed None"),
    ]
    for codes, side, seed, msg in cases:
        with pytest.raises(ValueError, match=msg):
            check_layout(Encoded(codes, side, (4, 4), "s", seed), lay, "s")


def test_code_ranges_and_multiples():
    lay = Layout((4, None), {}, codes_multiple=4)
    assert lay.codes_ok(4) and lay.codes_ok(400) and not lay.codes_ok(0) and not lay.codes_ok(6)
    assert "a multiple of 4" in lay.describe_codes()
    lay = Layout((2, 5), {})
    assert [lay.codes_ok(n) for n in range(7)] == [False, False, True, True, True, True, False]
    assert side_array(("float16", "float32"), None).describe() == "float16|float32 (?,)"
