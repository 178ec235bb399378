"""Entropy-coded E8: symbol mapping, real bitstream round trip, measured rate vs entropy."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmquant as mq
from mmquant.lattices.closest import closest_e8
from mmquant.lattices.entropy_coded import (
    RATE_TOLERANCE,
    E8EntropyCoded,
    RateNotMetWarning,
    e8_to_symbols,
    symbols_to_e8,
)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 30))
def test_symbol_mapping_is_a_bijection(seed, scale):
    lam = closest_e8(np.random.default_rng(seed).standard_normal((50, 8)) * scale)
    np.testing.assert_array_equal(symbols_to_e8(e8_to_symbols(lam)), lam)


@pytest.mark.parametrize("spec", ["e8ec:rate=3", "e8ec:rate=2,dither=false,center=true"])
def test_round_trip_rate_and_entropy(spec):
    x = np.random.default_rng(0).standard_normal((64, 512))
    q = mq.get(spec)
    enc = q.encode(x)
    xh = q.decode(enc)
    assert xh.shape == x.shape
    h = enc.stats["entropy_bits_per_entry"]
    assert abs(h - q.rate) < 0.01  # calibration of β
    code_bits = 8 * enc.code_bytes / x.size
    assert h - 0.01 < code_bits < h + 0.05  # rANS is within a few hundredths of the entropy
    assert enc.bits_per_entry == pytest.approx(code_bits + enc.side_bits_per_entry)
    # lattice at rate R: MSE ≈ 2πe·G(E8)·2^{-2R} at high rate (0.88 dB above Shannon); measured
    # 1.3 dB at R = 2 (the high-rate approximation is loose there): asserted below 1.5 dB
    mse = mq.metrics.relative_mse(x, xh)
    assert mse < 10 ** (1.5 / 10) * 2.0 ** (-2 * q.rate)


def test_validation():
    with pytest.raises(ValueError, match="rate"):
        E8EntropyCoded(rate=0.0)
    assert mq.get(E8EntropyCoded(rate=3.5).spec) == E8EntropyCoded(rate=3.5)


def test_rate_met_is_flagged_in_stats(recwarn):
    x = np.random.default_rng(1).standard_normal((64, 256))
    enc = mq.get("e8ec:rate=4").encode(x)
    assert enc.stats["rate_met"] == 1.0 and enc.stats["target_rate"] == 4.0
    assert not [w for w in recwarn if issubclass(w.category, RateNotMetWarning)]


@pytest.mark.parametrize(
    ("x", "spec", "reason"),
    [
        (np.random.default_rng(2).standard_normal((1, 8)), "e8ec:rate=2", "only 1 block"),
        (np.random.default_rng(2).standard_normal((4, 64)), "e8ec:rate=8", "only 32 block"),
        (np.zeros((4, 64)), "e8ec:rate=4", "all zeros"),
        (np.ones((4, 64)), "e8ec:rate=4", "limit of the search"),
    ],
    ids=["one-block", "few-blocks", "zeros", "constant"],
)
def test_unmet_rate_warns_and_flags(x, spec, reason):
    """A rate the data cannot reach: a RateNotMetWarning naming the reason, and rate_met = 0."""
    q = mq.get(spec)
    with pytest.warns(RateNotMetWarning, match=reason) as rec:
        enc = q.encode(x)
    assert rec[0].filename == __file__  # points at the caller
    assert enc.stats["rate_met"] == 0.0
    assert abs(enc.stats["entropy_bits_per_entry"] - q.rate) > RATE_TOLERANCE
    assert np.isfinite(q.decode(enc)).all()  # still a valid record
    # a demanding caller turns it into an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", RateNotMetWarning)
        with pytest.raises(RateNotMetWarning):
            q.encode(x)
