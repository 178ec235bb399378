import numpy as np
import pytest

from mmquant.theory import (
    GAMMA_R_STAR,
    R_STAR,
    gamma,
    gamma_inverse,
    shannon_distortion,
    shannon_rate,
)


def test_reference_values():
    # THEORY.md §1 (computed, 1e-9 unless stated)
    assert R_STAR == pytest.approx(0.9063235, abs=1e-7)
    assert GAMMA_R_STAR == pytest.approx(0.4883003, abs=1e-7)
    assert gamma(2.0) == pytest.approx(0.12109375, abs=1e-9)
    assert gamma(3.0) == pytest.approx(0.0310058594, abs=1e-9)
    assert gamma(4.0) == pytest.approx(0.0077972412, abs=1e-9)
    assert gamma(0.5) == pytest.approx(0.7177058, abs=1e-7)
    assert gamma(0.0) == 1.0


def test_tangent_condition_and_continuity():
    h = 1e-6
    d = (gamma(R_STAR + h) - gamma(R_STAR - h)) / (2 * h)  # C¹ at R*: both branches share the slope
    assert gamma(R_STAR) - R_STAR * d == pytest.approx(1.0, abs=1e-6)


def test_convex_decreasing_vectorised():
    r = np.linspace(0, 8, 2001)
    g = gamma(r)
    assert g.shape == r.shape
    assert np.all(np.diff(g) < 0)
    assert np.all(np.diff(g, 2) > -1e-12)
    # below R* Γ is below the pure high-rate formula (time sharing helps)
    lo = r[(r > 0) & (r < R_STAR)]
    assert np.all(gamma(lo) < 2 * 2.0 ** (-2 * lo) - 2.0 ** (-4 * lo))


def test_inverse():
    r = np.linspace(0.01, 10, 500)
    np.testing.assert_allclose(gamma_inverse(gamma(r)), r, rtol=1e-9, atol=1e-9)
    assert gamma_inverse(1.5) == 0.0
    with pytest.raises(ValueError, match="> 0"):
        gamma_inverse(0.0)


def test_shannon():
    assert shannon_distortion(2.0) == 0.0625
    assert shannon_rate(0.0625) == pytest.approx(2.0)
    assert shannon_rate(4.0) == 0.0


def test_bad_rates():
    with pytest.raises(ValueError, match="≥ 0"):
        gamma(-1.0)
    with pytest.raises(ValueError, match="finite"):
        gamma([1.0, np.nan])
