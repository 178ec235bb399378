"""Closest-point tests: brute force over nearby lattice points, tie rule, G(E8) by Monte Carlo."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmquant.lattices.closest import E8_NSM, closest_dn, closest_e8, closest_zn, lattice

_BOX = np.array(list(itertools.product([0.0, 1.0], repeat=8)))


def _brute_dn(x):
    """Min distance² to Dₙ over the box ⌊x⌋ + {0,1}ⁿ (which contains the closest point)."""
    cand = np.floor(x) + _BOX[:, : x.size] if x.size == 8 else None
    if x.size != 8:
        box = np.array(list(itertools.product([0.0, 1.0], repeat=x.size)))
        cand = np.floor(x) + box
    cand = cand[cand.sum(axis=1) % 2 == 0]
    return np.min(np.sum((cand - x) ** 2, axis=1))


def _brute_e8(x):
    return min(_brute_dn(x), _brute_dn(x - 0.5))


def _in_e8(p):
    two = 2 * p
    if not np.all(two == np.round(two)):
        return False
    ints = np.all(p == np.round(p))
    halves = np.all(p - 0.5 == np.round(p - 0.5))
    base = p if ints else p - 0.5
    return (ints or halves) and int(np.sum(base)) % 2 == 0


vec8 = arrays(np.float64, 8, elements=st.floats(-6, 6, allow_nan=False, width=64))


@settings(max_examples=300, deadline=None)
@given(vec8)
def test_e8_is_closest(x):
    c = closest_e8(x)
    assert _in_e8(c)
    assert np.sum((x - c) ** 2) <= _brute_e8(x) + 1e-12


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(2, 6), elements=st.floats(-5, 5, width=64)))
def test_dn_is_closest(x):
    c = closest_dn(x[None])[0]
    assert c.sum() % 2 == 0
    assert np.sum((x - c) ** 2) <= _brute_dn(x) + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, 8, elements=st.integers(-4096, 4096).map(lambda i: i / 1024)),
    st.integers(-3, 3),
)
def test_translation_invariance(x, k):
    """Q(x + λ) = Q(x) + λ for λ in E8 (dyadic x, so that the additions are exact)."""
    lam = np.full(8, 0.5) + np.array([2 * k, 0, 0, 0, 0, 0, 0, 0])  # in E8
    np.testing.assert_array_equal(closest_e8(x + lam), closest_e8(x) + lam)


def test_tie_rules():
    np.testing.assert_array_equal(closest_zn(np.array([2.5, -2.5, 0.5])), [3.0, -2.0, 1.0])
    # sum of rounded is odd with two equal errors: the lowest index is re-rounded
    np.testing.assert_array_equal(closest_dn(np.array([[0.75, 0.25, 0, 0]])), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(closest_dn(np.array([[0.25, 0.75, 0, 0]])), [[1, 1, 0, 0]])
    # equidistant from both E8 cosets: the integer one wins
    x = np.full(8, 0.25)
    np.testing.assert_array_equal(closest_e8(x), np.zeros(8))


def test_vectorised_shapes():
    x = np.random.default_rng(0).standard_normal((3, 5, 8))
    c = closest_e8(x)
    assert c.shape == x.shape
    for i in range(3):
        np.testing.assert_array_equal(c[i], closest_e8(x[i]))
    with pytest.raises(ValueError, match="length 8"):
        closest_e8(np.zeros(7))


def test_e8_second_moment_monte_carlo():
    """G(E8) = E‖x − Q(x)‖²/8 for x uniform over a cell of volume 1; within 0.3% of 929/12960."""
    rng = np.random.default_rng(12345)
    u = rng.random((400_000, 8)) * 4.0  # uniform over a big cube (a union of cells, mod E8)
    e = u - closest_e8(u)
    g = np.mean(np.sum(e * e, axis=1)) / 8.0
    assert abs(g / E8_NSM - 1) < 3e-3


@pytest.mark.parametrize("name", ["e8", "d4", "zn"])
def test_generator_inverse_exact(name):
    lat = lattice(name)
    np.testing.assert_array_equal(lat.generator @ lat.generator_inverse, np.eye(8))
    pts = lat.closest(np.random.default_rng(1).standard_normal((100, 8)) * 3)
    c = pts @ lat.generator_inverse
    np.testing.assert_array_equal(c, np.round(c))
