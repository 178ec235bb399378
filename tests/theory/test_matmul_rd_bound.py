"""The lower bound n·a·b·Γ(R) (arXiv 2410.13780) against measured quantizers on Gaussian data."""

import numpy as np
import pytest

import mmquant as mq
from mmquant.theory.matmul_rd import gamma, matmul_lower_bound


def test_formula_and_validation():
    assert matmul_lower_bound(10, 3, 4, 0.0) == 120.0
    np.testing.assert_allclose(matmul_lower_bound(2, 2, 2, [2.0, 3.0]), 8 * gamma([2.0, 3.0]))
    with pytest.raises(ValueError, match="n must be"):
        matmul_lower_bound(0, 1, 1, 1.0)
    with pytest.raises(ValueError):
        matmul_lower_bound(1, 1, 1, -1.0)


@pytest.mark.parametrize("spec", ["e8:q=6,betas=2", "e8ec:rate=3", "timeshare:rate=0.5"])
def test_no_quantizer_beats_the_bound(spec):
    """Measured E‖AᵀB − Ĉ‖² (one draw, n = 1024, a = b = 32) stays above n·a·b·Γ(measured rate)."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((1024, 32)), rng.standard_normal((1024, 32))
    q = mq.get(spec)
    ea, eb = q.encode(a.T), q.encode(b.T)
    err = float(np.sum((a.T @ b - q.decode(ea) @ q.decode(eb).T) ** 2))
    rate = 0.5 * (ea.bits_per_entry + eb.bits_per_entry)
    assert err >= matmul_lower_bound(1024, 32, 32, rate)
