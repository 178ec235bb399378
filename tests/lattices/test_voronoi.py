"""Voronoi codes: packing, round trip, β selection rules, overload, rates and quality on Gaussians."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmquant as mq
from mmquant.lattices.closest import lattice
from mmquant.lattices.voronoi import (
    E8Voronoi,
    dither,
    optimal_betas,
    pack_base_q,
    unpack_base_q,
    voronoi_decode_blocks,
    voronoi_encode_blocks,
)
from mmquant.theory.matmul_rd import gamma


@settings(max_examples=40, deadline=None)
@given(q=st.integers(2, 256), nb=st.integers(1, 40), seed=st.integers(0, 1000))
def test_base_q_packing_round_trip(q, nb, seed):
    d = np.random.default_rng(seed).integers(0, q, (nb, 8))
    data = pack_base_q(d, q)
    back, used = unpack_base_q(data, q, nb)
    np.testing.assert_array_equal(back, d)
    assert used == data.size


def test_packed_rate_close_to_log2_q():
    for q in (3, 7, 14, 15, 16):
        nb = 1024
        data = pack_base_q(np.zeros((nb, 8), int), q)
        bits = 8 * data.size / (8 * nb)
        assert math.log2(q) <= bits <= math.log2(q) + 1 / 16 + 1e-9


@pytest.mark.parametrize("name", ["e8", "d4", "zn"])
@pytest.mark.parametrize("dithered", [False, True])
def test_decode_equals_encoder_estimate(name, dithered):
    lat = lattice(name)
    z = np.random.default_rng(0).standard_normal((3000, 8)) * 1.5
    u = dither(3000, lat, 5) if dithered else None
    betas = np.array([0.2, 0.3, 0.45])
    for rule in ("least-error", "no-overload"):
        r = voronoi_encode_blocks(z, lat, 9, betas, u, rule, backend="numpy")
        assert r.digits.min() >= 0 and r.digits.max() < 9
        zh = voronoi_decode_blocks(r.digits, r.beta_index, lat, 9, betas, u, backend="numpy")
        np.testing.assert_array_equal(zh, r.estimate)


def test_no_overload_inside_and_overload_far_out():
    lat = lattice("e8")
    z = np.zeros((2, 8))
    z[1] = 50.0
    r = voronoi_encode_blocks(z, lat, 4, np.array([0.5]), None, backend="numpy")
    assert r.overload.tolist() == [False, True]


def test_rules():
    """least-error never has more error than no-overload; no-overload picks the smallest safe β."""
    lat = lattice("e8")
    z = np.random.default_rng(1).standard_normal((4000, 8))
    betas = np.array(optimal_betas("e8", 6, 3))
    le = voronoi_encode_blocks(z, lat, 6, betas, None, "least-error", backend="numpy")
    no = voronoi_encode_blocks(z, lat, 6, betas, None, "no-overload", backend="numpy")
    e_le = np.sum((z - le.estimate) ** 2, axis=1)
    e_no = np.sum((z - no.estimate) ** 2, axis=1)
    assert np.all(e_le <= e_no + 1e-12)
    for j in range(3):
        single = voronoi_encode_blocks(z, lat, 6, betas[j : j + 1], None, backend="numpy")
        earlier = no.beta_index > j
        assert np.all(single.overload[earlier])  # a larger β was chosen only if β_j overloads


def test_optimal_betas_sorted_and_cached():
    b = optimal_betas("e8", 14, 4)
    assert len(b) == 4 and list(b) == sorted(b)
    assert optimal_betas("e8", 14, 4) is b


@pytest.mark.parametrize(
    "spec", ["e8:q=5,betas=2", "d4:q=6,betas=2", "zn:q=6", "e8:q=7,dither=true,center=true"]
)
def test_round_trip_and_measured_rate(spec):
    x = np.random.default_rng(2).standard_normal((6, 5, 100)).astype(np.float32) + 0.3
    q = mq.get(spec)
    enc = q.encode(x)
    assert enc.codes.dtype == np.uint8
    xh = q.decode(enc)
    assert xh.shape == x.shape
    assert mq.metrics.relative_mse(x, xh) < 0.2
    assert enc.bits_per_entry == 8 * (enc.codes.nbytes + enc.side_bytes) / x.size
    assert "overload_fraction" in enc.stats
    assert mq.get(q.spec) == q


def test_spec_forms():
    assert mq.get("e8:q=14,betas=4").scales == optimal_betas("e8", 14, 4, "least-error", False)
    q = mq.get("e8:q=14,betas=0.2;0.3;0.5")
    assert q.scales == (0.2, 0.3, 0.5)
    assert mq.get(q.spec) == q
    with pytest.raises(ValueError, match="increasing"):
        E8Voronoi(betas=(0.3, 0.2))
    with pytest.raises(ValueError, match="q"):
        E8Voronoi(q=1)
    with pytest.raises(ValueError, match="rule"):
        E8Voronoi(rule="best")


def test_rate_and_gap_e8_q14_k4():
    """iid N(0,1) A, B (n = 2048, a = b = 64): measured rate = 61/16 + 2/8 + side info.

    Gap to Γ(R) measured 2.24 dB on 4096×256 (target 1.8 dB not reached, see report); asserted
    here with margin: < 2.5 dB, and better than INT4 g=32-class scalar quantization would give
    (about 3.5 dB at 4.25+ bits) is checked in test_lattice_quality.py.
    """
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2048, 64)), rng.standard_normal((2048, 64))
    rep = mq.product_error(a, b, "e8:q=14,betas=4")
    assert abs(rep.rate_a - (61 / 16 + 2 / 8 + 16 / 2048 + 32 / (64 * 2048))) < 1e-9
    assert rep.gap_db < 2.5
    assert rep.error < 2 * float(gamma(rep.rate))
