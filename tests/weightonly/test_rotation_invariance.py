"""A random rotation leaves WaterSIC's distortion unchanged and shrinks GPTQ's gap."""

import numpy as np

from mmquant.theory.highrate import waterfill_rate
from mmquant.weightonly import gptq, watersic

A, N = 2048, 256


def _setup():
    rng = np.random.default_rng(7)
    lam = np.exp(rng.uniform(0.0, np.log(1e4), N))
    lam /= np.exp(np.mean(np.log(lam)))
    return rng.normal(size=(A, N)), np.diag(lam), lam


def _norm_dist(q):  # distortion at the same rate: D·2^{2R}
    return q.wmse * 2.0 ** (2.0 * q.bits_per_weight)


def test_rotation_invariance_watersic_and_gptq_gap_shrinks():
    w, sigma, lam = _setup()
    rate = 6.0
    plain = watersic(w, sigma, rate)
    rot = watersic(w, sigma, rate, rotate=True, seed=3)
    assert abs(_norm_dist(rot) / _norm_dist(plain) - 1.0) < 0.02
    g_plain = gptq(w, sigma, rate)
    g_rot = gptq(w, sigma, rate, rotate=True, seed=3)
    gap_plain = g_plain.bits_per_weight - waterfill_rate(lam, g_plain.wmse)
    gap_rot = g_rot.bits_per_weight - waterfill_rate(lam, g_rot.wmse)
    # diagonal Σ: AM/GM of the eigenvalues over four decades, ½log2 ≈ 1.7 bit
    assert gap_plain > 1.2
    assert gap_rot < gap_plain - 0.8
