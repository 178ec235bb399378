import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.theory import scalar as sc


def test_reference_constants():
    # THEORY.md §5 (computed, 1e-6)
    assert sc.optimal_constant_gaussian(0.0) == pytest.approx(2.720699, abs=1e-6)
    assert sc.optimal_constant_gaussian(0.0) == pytest.approx(math.sqrt(3) * math.pi / 2, rel=1e-10)
    assert sc.optimal_constant_gaussian(0.5) == pytest.approx(3.648073, abs=1e-6)
    assert sc.optimal_constant_gaussian(0.8) == pytest.approx(4.387589, abs=1e-6)
    assert sc.gain_over_panter_dite_db(0.5) == pytest.approx(0.487, abs=1e-3)
    assert sc.gain_over_panter_dite_db(0.8) == pytest.approx(1.504, abs=1e-3)
    assert sc.panter_dite_product_cost(0.8) == pytest.approx(2.720699 * 2.28, rel=1e-6)


def test_phase_transition_and_peaks():
    assert sc.density_peaks(0.8)[1] == pytest.approx(1.198958, abs=1e-6)
    assert sc.density_peaks(0.5) == (0.0,)
    assert sc.density_peaks(sc.PHASE_TRANSITION_RHO) == (0.0,)
    assert len(sc.density_peaks(sc.PHASE_TRANSITION_RHO + 1e-3)) == 2
    # the closed form agrees with a numerical argmax of λ*
    for rho in (0.3, 0.6, 0.8, 0.95, -0.9):
        u = np.linspace(-5, 5, 200001)
        lam = sc.gaussian_pair_density(u, rho)
        assert abs(u[np.argmax(lam)]) == pytest.approx(abs(sc.density_peaks(rho)[-1]), abs=1e-4)


def test_density_integrates_to_one_and_general_form_matches_closed_form():
    u = np.linspace(-30, 30, 60001)
    for rho in (0.0, 0.5, 0.8):
        lam = sc.gaussian_pair_density(u, rho)
        assert np.trapezoid(lam, u) == pytest.approx(1.0, abs=1e-9)
        p = np.exp(-u * u / 2) / math.sqrt(2 * math.pi)
        m = sc.gaussian_pair_conditional_second_moment(u, rho)
        assert np.allclose(sc.optimal_point_density(u, p, m), lam, atol=1e-9)
        assert sc.optimal_constant(u, p, m) == pytest.approx(
            sc.optimal_constant_gaussian(rho), rel=1e-8
        )
        # λ* is the minimiser: its high-res cost equals C*, Panter–Dite's is larger
        assert sc.highres_coefficient(u, p, m, lam) == pytest.approx(
            sc.optimal_constant_gaussian(rho), rel=1e-8
        )
        pd = sc.gaussian_pair_density(u, 0.0)
        assert sc.highres_coefficient(u, p, m, pd) == pytest.approx(
            sc.panter_dite_product_cost(rho), rel=1e-8
        )


def test_bit_split():
    bx, by = sc.bit_split(4.0, 1.0, 8.0)
    assert bx - by == pytest.approx(0.5 * math.log2(4.0), abs=1e-12)
    assert bx + by == pytest.approx(8.0)
    # it is the minimiser of the high-resolution V on the line b_x + b_y = 8
    b = np.linspace(2, 6, 4001)
    v = sc.highres_product_error(4.0, 1.0, b, 8.0 - b)
    assert b[np.argmin(v)] == pytest.approx(bx, abs=1e-3)
    assert sc.bit_split_integer(4.0, 1.0, 8) in ((4, 4), (5, 3))
    assert sc.bit_split_integer(64.0, 1.0, 8) == (5, 3)
    with pytest.raises(ValueError):
        sc.bit_split(0.0, 1.0, 8.0)


def test_lloyd_max_and_uniform_mse():
    # THEORY.md §7 (Max's table; the converged 4-bit value is 0.009501)
    for bits, ref in ((1, 0.3634), (2, 0.1175), (3, 0.03454), (4, 0.009497)):
        assert sc.gaussian_mse(sc.lloyd_max_gaussian(2**bits)) == pytest.approx(ref, rel=1e-3)
    assert sc.gaussian_mse(sc.uniform_gaussian(16)) == pytest.approx(0.01154, rel=1e-3)


def test_finite_k_exact_product_error_reference_values():
    # THEORY.md §5: ρ = 0.8, K = 16, same quantizer on both sides (computed, 0.5%)
    rho = 0.8
    cases = [
        (sc.gaussian_product_compander(rho, 16), 3.4154e-2),
        (sc.lloyd_max_gaussian(16), 4.8417e-2),
        (sc.uniform_gaussian(16), 6.3840e-2),
    ]
    for cb, ref in cases:
        v, _ = sc.gaussian_product_error(cb, cb, rho)
        assert v == pytest.approx(ref, rel=5e-3)


def test_high_resolution_limit_k256():
    rho = 0.8
    cb = sc.gaussian_product_compander(rho, 256)
    v, beta = sc.gaussian_product_error(cb, cb, rho)
    assert 256**2 * v / (2 * sc.optimal_constant_gaussian(rho)) == pytest.approx(1.0, abs=2e-3)
    assert abs(beta) < 1e-4


def test_exact_product_error_against_monte_carlo():
    # quadrature vs a 2e6-sample Monte Carlo estimate (seeded; 4 standard errors)
    rng = np.random.default_rng(1)
    rho, n = 0.6, 2_000_000
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho * rho) * rng.standard_normal(n)
    qx, qy = sc.gaussian_product_compander(rho, 8), sc.uniform_gaussian(4)
    v, beta = sc.gaussian_product_error(qx, qy, rho)
    d = x * y - qx.quantize(x) * qy.quantize(y)
    se = np.std(d * d) / math.sqrt(n)
    assert abs(np.mean(d * d) - v) < 4 * se
    assert abs(np.mean(d) - beta) < 4 * np.std(d) / math.sqrt(n)


def test_exact_product_error_degenerate_cases():
    cb = sc.uniform_gaussian(8)
    v0, b0 = sc.gaussian_product_error(cb, cb, 0.0)
    # independent pair: V = 1 − 2E[XQ(X)]² + E[Q(X)²]² (E[XQ] ≠ E[Q²]: uniform is not centroidal)
    m0, m1, _, _ = sc._cell_moments(cb.thresholds)
    e_q2 = float(np.sum(cb.points**2 * m0))
    e_xq = float(np.sum(cb.points * m1))
    assert v0 == pytest.approx(1.0 - 2 * e_xq**2 + e_q2**2, rel=1e-9)
    assert b0 == pytest.approx(0.0, abs=1e-12)
    v1, _ = sc.gaussian_product_error(cb, cb, 1.0)  # Y = X
    x = np.linspace(-12, 12, 400001)
    f = (x * x - cb.quantize(x) ** 2) ** 2 * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    assert v1 == pytest.approx(np.trapezoid(f, x), rel=1e-4)  # trapezoid over jumps: O(h)


def test_weighted_lloyd_beats_compander_on_weighted_mse():
    rho = 0.8
    wl = sc.weighted_lloyd_gaussian(rho, 16)
    comp = sc.gaussian_product_compander(rho, 16)
    u = np.linspace(-14, 14, 400001)
    wphi = np.exp(-u * u / 2) / math.sqrt(2 * math.pi) * (0.36 + 0.64 * u * u)

    def wmse(cb):
        return np.trapezoid(wphi * (u - cb.quantize(u)) ** 2, u)

    assert wmse(wl) < wmse(comp)
    # centroid condition holds at the fixed point
    m0, m1, m2, m3 = sc._cell_moments(wl.thresholds)
    assert np.allclose(wl.points, (0.36 * m1 + 0.64 * m3) / (0.36 * m0 + 0.64 * m2), atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 7), st.floats(-0.99, 0.99))
def test_compander_codebook_properties(bits, rho):
    cb = sc.gaussian_product_compander(rho, 2**bits)
    assert cb.levels == 2**bits
    assert np.all(np.diff(cb.points) > 0)
    # points interleave with thresholds and the codebook is symmetric
    assert np.all(cb.points[:-1] < cb.thresholds) and np.all(cb.thresholds < cb.points[1:])
    assert np.allclose(cb.points, -cb.points[::-1], atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError):
        sc.gaussian_pair_density(0.0, 1.5)
    with pytest.raises(ValueError):
        sc.optimal_point_density([0.0, 1.0], [1, 1], [1, 1])
    with pytest.raises(ValueError):
        sc.optimal_point_density([0.0, 1.0, 2.0], [1, -1, 1], [1, 1, 1])
    with pytest.raises(ValueError):
        sc.ScalarCodebook(np.array([1.0, 0.0]), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError):
        sc.compander_codebook(np.linspace(0, 1, 5), np.ones(4), 4)
