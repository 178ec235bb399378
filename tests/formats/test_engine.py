"""The block engine: every scaled scalar format is one BlockFormat; side keys; static groups."""

from __future__ import annotations

import numpy as np
import pytest

import mmquant as mq
from mmquant.formats.elements import FORMATS, MX_ELEMENTS, value_table
from mmquant.formats.engine import BlockFormat
from mmquant.layout import LEGACY_SIDE_KEYS, SIDE_KEYS
from mmquant.theory import highrate

ENGINE_SPECS = [
    "int",
    "int:bits=3,group=-1",
    "int:bits=5,group=0,affine=true,scale_dtype=float32",
    "fp:fmt=e2m1",
    "fp:fmt=e5m2,group=7",
    "mxfp4",
    "mxfp6:elem=e3m2",
    "mxfp8",
    "mxint8",
    "nvfp4",
    "nf4",
    "nf4:group=0",
    "compander:bits=3,rho=0.5",
    "lloydmax:bits=6",
    "uniform:bits=2",
]


@pytest.mark.parametrize("spec", ENGINE_SPECS)
def test_each_family_is_a_block_format(spec):
    q = mq.get(spec)
    fmt = q.block_format()
    assert isinstance(fmt, BlockFormat)
    for shape in [(3, 40), (2, 3, 17), (1, 1)]:
        assert q.layout(shape) == fmt.layout(shape)
    x = np.random.default_rng(1).standard_normal((5, 70)).astype(np.float32)
    enc = q.encode(x)
    codes, side = fmt.encode(x)
    assert codes.tobytes() == enc.codes.tobytes()
    assert set(side) == set(enc.side) and set(side) <= set(SIDE_KEYS)
    out = fmt.decode(enc.codes, enc.side, enc.shape)
    assert out.dtype == np.float32 and out.tobytes() == q.decode(enc).tobytes()


def test_side_keys_have_one_meaning_and_legacy_names_are_declared():
    families = {mq.core.parse_spec(s)[0] for s in ENGINE_SPECS} | {"datacompander"}
    for spec in [*ENGINE_SPECS, "datacompander"]:
        keys = set(mq.get(spec).layout((4, 64)).side)
        assert "scale" not in keys and keys <= set(SIDE_KEYS), spec
    # every renamed family maps "scale" to keys that exist
    assert set(LEGACY_SIDE_KEYS) <= families
    for renames in LEGACY_SIDE_KEYS.values():
        assert all(set(new) <= set(SIDE_KEYS) for new in renames.values())


def test_theory_reads_the_format_tables():
    e2m1 = value_table("e2m1")
    assert highrate.E2M1_LEVELS == tuple(float(v) for v in e2m1[:8])
    assert highrate.E2M1_LEVELS[-1] == FORMATS["e2m1"].max_normal == 6.0
    assert FORMATS["e4m3"].max_normal == 448.0 and FORMATS["e4m3"].min_subnormal == 2.0**-9
    assert MX_ELEMENTS["e2m1"].emax == 2


@pytest.mark.parametrize("spec", ["int", "int:affine=true,bits=3", "nf4", "mxfp4", "nvfp4"])
def test_static_groups_store_the_formats_scales(spec):
    """Static groups of W are the scales its encoder writes; rounding W on them gives codes that
    decode within the format's own error (the same codes, up to ties of the division)."""
    w = np.random.default_rng(2).standard_normal((6, 80)).astype(np.float32)
    q = mq.get(spec)
    fmt = q.block_format()
    st = fmt.static(w)
    enc = q.encode(w)
    for key in enc.side:
        assert st.side[key].tobytes() == enc.side[key].tobytes()
    cols = [st.quantize(j, w[:, j].astype(np.float64)) for j in range(w.shape[1])]
    codes = np.stack([c for c, _ in cols], axis=1)
    vals = np.stack([v for _, v in cols], axis=1)
    plain = q.decode(enc)
    got = fmt.decode_codes(codes.reshape(-1), st.side, w.shape)
    assert np.array_equal(got.astype(np.float64), vals)  # the values the decoder returns
    assert np.mean(got != plain) < 1e-3
    with pytest.raises(ValueError, match="2-D"):
        fmt.static(w.reshape(2, 3, 80))
