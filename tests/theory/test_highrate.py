"""Reverse waterfilling, high-rate limits, and the predicted rate loss of the scalar formats."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmquant as mq
from mmquant.theory import gamma
from mmquant.theory.highrate import (
    absmax_int_mse_heuristic,
    block_format_mse,
    expected_max_sq,
    matmul_highrate,
    rate_loss,
    waterfill,
    waterfill_distortion,
    waterfill_rate,
    weight_only_highrate,
)

LAM = [4.0, 1.0, 0.25, 0.0625]


def test_reference_values():
    assert waterfill_distortion(LAM, 0.5) == pytest.approx(0.328125, abs=1e-6)
    assert waterfill_distortion(LAM, 2.0) == pytest.approx(0.03125, abs=1e-6)
    sol = waterfill(LAM, 0.5)
    assert sol.theta == pytest.approx(0.5)
    np.testing.assert_allclose(sol.component_rates, [1.5, 0.5, 0.0, 0.0], atol=1e-12)
    assert weight_only_highrate(LAM, 2.0) == pytest.approx(0.03125, abs=1e-12)


def test_high_rate_formula_equals_waterfilling_when_all_components_active():
    lam = np.exp(np.random.default_rng(0).uniform(0, np.log(100.0), 64))
    for r in (4.0, 6.0):
        assert waterfill_distortion(lam, r, sigma2=2.0) == pytest.approx(
            weight_only_highrate(lam, r, sigma2=2.0), rel=1e-10
        )
    # below the high-rate regime the formula (Shannon lower bound) is not achievable
    assert waterfill_distortion(lam, 0.5) > weight_only_highrate(lam, 0.5)


@settings(max_examples=60, deadline=None)
@given(
    lam=st.lists(st.floats(1e-4, 1e3), min_size=1, max_size=20),
    rate=st.floats(0.01, 8.0),
)
def test_rate_and_distortion_are_inverse(lam, rate):
    d = waterfill_distortion(lam, rate)
    assert waterfill_rate(lam, d) == pytest.approx(rate, rel=1e-7, abs=1e-9)
    assert 0 < d <= np.mean(lam) * (1 + 1e-12)


def test_zero_eigenvalues_and_errors():
    assert waterfill_distortion([1.0, 0.0], 1.0) == pytest.approx(0.5 * 2.0**-4)
    assert waterfill_rate([1.0, 1.0], 2.0) == 0.0
    with pytest.raises(ValueError, match="exactly one"):
        waterfill(LAM)
    with pytest.raises(ValueError, match="≥ 0"):
        waterfill([1.0, -1.0], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        waterfill([1.0, np.nan], 1.0)


def test_matmul_highrate_is_the_leading_term_of_gamma():
    for r in (4.0, 6.0, 8.0):
        assert float(gamma(r)) / matmul_highrate(r) == pytest.approx(1.0, abs=2.0 ** (-2 * r))
    s = np.diag([4.0, 0.25])  # det^{1/n} = 1, tr = 4.25
    assert matmul_highrate(3.0, s, None) == pytest.approx(2.0**-6 * (1 * 2 + 1 * 4.25) / 2)


def test_expected_max_and_int_heuristic_match_theory_md():
    assert expected_max_sq(16) == pytest.approx(4.54948, abs=2e-5)
    assert expected_max_sq(32) == pytest.approx(5.70951, abs=2e-5)
    assert expected_max_sq(128) == pytest.approx(8.14825, abs=2e-5)
    assert absmax_int_mse_heuristic(4, 32) == pytest.approx(9.41e-3, rel=0.02)


@pytest.mark.parametrize(
    ("spec", "kind", "group"),
    [("int:bits=4,group=32", "int", 32), ("mxfp4", "mxfp4", 32), ("nvfp4", "nvfp4", 16)],
)
def test_predicted_rate_loss_matches_measured_format(spec, kind, group):
    x = np.random.default_rng(11).normal(size=(512, 2048))
    q = mq.get(spec)
    enc = q.encode(x)
    eps = float(np.mean((x - q.decode(enc)) ** 2) / np.mean(x**2))
    pred = block_format_mse(kind, group=group, tensor_amax=float(np.abs(x).max()))
    assert eps == pytest.approx(pred, rel=0.02)
    measured_loss = rate_loss(enc.bits_per_entry, eps)
    assert rate_loss(enc.bits_per_entry, pred) == pytest.approx(measured_loss, abs=0.015)
    if kind == "int":  # the paper's heuristic as well
        heur = absmax_int_mse_heuristic(4, 32)
        assert rate_loss(4.5, heur) == pytest.approx(measured_loss, abs=0.015)


def test_rate_loss_definition():
    assert rate_loss(4.5, 2.0**-8) == pytest.approx(0.5)
    assert rate_loss(4.0, math.pi * math.e / 6 * 2.0**-8) == pytest.approx(0.2546, abs=1e-4)
