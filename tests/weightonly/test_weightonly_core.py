"""RTN / GPTQ / WaterSIC: exact decoding, rates, numerics, rescalers and input errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.weightonly import (
    decode,
    gptq,
    prepare_covariance,
    quantize_layer,
    rtn,
    waterfill_gap_bits,
    watersic,
    wmse,
)
from mmquant.weightonly.coding import column_code_bits, decode_columns, encode_columns


def _problem(a=96, n=64, seed=0, tokens=None):
    rng = np.random.default_rng(seed)
    t = tokens or 4 * n
    x = rng.normal(size=(t, n)) @ rng.normal(size=(n, n)) * 0.3 + rng.normal(size=(t, n))
    x *= np.exp(rng.uniform(-1.5, 1.5, n))  # input features of different scales
    sigma = x.T @ x / t
    return rng.normal(size=(a, n)), 0.5 * (sigma + sigma.T)


@pytest.mark.parametrize(
    "fn",
    [
        lambda w, s: watersic(w, s, 3.0),
        lambda w, s: watersic(w, s, 3.0, rescale="both", rotate=True, seed=1),
        lambda w, s: gptq(w, s, 3.0),
        lambda w, s: gptq(w, s, grid="int", bits=4, group=16, rotate=True),
        lambda w, s: rtn(w, s, 3.0),
        lambda w, s: rtn(w, s, grid="int", bits=3),
    ],
)
def test_bitstream_decodes_to_w_hat_and_wmse_is_measured(fn):
    w, s = _problem()
    q = fn(w, s)
    np.testing.assert_array_equal(decode(q), q.w_hat)
    assert q.wmse == pytest.approx(wmse(w, q.w_hat, s))
    assert q.bits_per_weight == pytest.approx(8 * q.nbytes / w.size)
    assert q.side_bits_per_weight < q.bits_per_weight
    assert 0 < q.entropy <= q.entropy_pooled + 1e-9


def test_rate_search_hits_target_and_int_grid_rate_is_exact():
    w, s = _problem(a=256, n=64)
    for f in (watersic, gptq, rtn):
        assert f(w, s, 3.5).bits_per_weight == pytest.approx(3.5, abs=0.03)
    q = gptq(w, s, grid="int", bits=4, group=16)
    assert q.bits_per_weight == pytest.approx(4 + 16 / 16 + 32 / w.size)
    assert q.coding == "fixed:4"
    assert np.abs(q.codes).max() <= 7


def test_gptq_beats_rtn_and_watersic_beats_gptq_on_correlated_inputs():
    w, s = _problem(a=256, n=64)
    assert gptq(w, s, grid="int", bits=4).wmse < rtn(w, s, grid="int", bits=4).wmse
    assert watersic(w, s, 4.0).wmse < gptq(w, s, 4.0).wmse


def test_rescalers_never_increase_wmse():
    w, s = _problem(a=128, n=48, seed=3)
    c = watersic(w, s, 2.0).y_step
    d_none = watersic(w, s, step=c, rescale="none", lmmse=False).wmse
    d_lmmse = watersic(w, s, step=c, rescale="none").wmse
    d_cols = watersic(w, s, step=c, rescale="columns").wmse
    d_both = watersic(w, s, step=c, rescale="both").wmse
    assert d_lmmse <= d_none * (1 + 1e-3)
    assert d_cols <= d_lmmse * (1 + 1e-3)
    assert d_both <= d_cols * (1 + 1e-3)


def test_dead_columns_are_zero_and_singular_sigma_is_damped():
    w, s = _problem(a=64, n=32, tokens=16)  # rank 16 < 32: singular Σ
    s[:, 5] = s[5, :] = 0.0  # a dead input
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s)
    for q in (watersic(w, s, 3.0, damp=0.0), gptq(w, s, 3.0, rotate=True, damp=0.0)):
        assert not q.live[5] and q.live.sum() == 31
        assert np.all(q.w_hat[:, 5] == 0.0)
        assert q.damping > 0
        assert np.all(np.isfinite(q.w_hat))
        np.testing.assert_array_equal(decode(q), q.w_hat)
    p = prepare_covariance(s, damp=0.0)
    assert p.chol.shape == (31, 31)


def test_input_errors():
    w, s = _problem(a=8, n=6)
    with pytest.raises(ValueError, match="n×n"):
        watersic(w, s[:5, :5], 3.0)
    bad = s.copy()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        gptq(w, bad, 3.0)
    w2 = w.copy()
    w2[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        rtn(w2, s, 3.0)
    with pytest.raises(ValueError, match="no live input"):
        watersic(w, np.zeros_like(s), 3.0)
    with pytest.raises(ValueError, match="positive semidefinite"):
        watersic(w, np.eye(6) + 3.0 * (np.ones((6, 6)) - np.eye(6)), 3.0)  # eigenvalue −2
    with pytest.raises(ValueError, match="negative diagonal"):
        watersic(w, -np.eye(6), 3.0)
    with pytest.raises(ValueError, match="side information"):
        watersic(w, s, 0.01)
    with pytest.raises(ValueError, match="exactly one"):
        watersic(w, s)
    with pytest.raises(ValueError, match="method"):
        quantize_layer("bogus", w, s, 3.0)
    with pytest.raises(ValueError, match="grid"):
        gptq(w, s, 3.0, grid="nf4")


def test_waterfill_gap_bits_is_rate_minus_waterfilling_rate():
    w, s = _problem(a=256, n=32)
    q = quantize_layer("watersic", w, s, 4.0)
    g = waterfill_gap_bits(q, s, sigma2=float(np.mean(w**2)))
    assert 0.1 < g < 0.6


@settings(max_examples=25, deadline=None)
@given(
    a=st.integers(1, 40),
    n=st.integers(1, 12),
    scale=st.floats(0.0, 300.0),
    seed=st.integers(0, 2**16),
)
def test_column_coder_round_trip(a, n, scale, seed):
    rng = np.random.default_rng(seed)
    z = np.rint(rng.normal(size=(a, n)) * scale * rng.uniform(0, 1, n)).astype(np.int64)
    cs = encode_columns(z)
    np.testing.assert_array_equal(decode_columns(cs), z)
    # the real stream is within one 32-bit word (+ rounding of 24-bit probabilities) of the ideal
    assert 8 * cs.stream.nbytes <= column_code_bits(z) * 1.01 + 64


@pytest.mark.parametrize("w", [np.zeros((512, 16)), np.ones((512, 16))])
def test_degenerate_weights_cost_only_side_information(w):
    for f in (watersic, gptq, rtn):
        q = f(w, np.eye(16), 3.0)
        assert q.wmse == pytest.approx(0.0, abs=1e-12)
        assert q.bits_per_weight < 0.1
        np.testing.assert_array_equal(decode(q), q.w_hat)
