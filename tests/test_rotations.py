"""Tests of mmquant.rotations: Paley Hadamard matrices, fast WHT, orthogonality, inverses."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.rotations import (
    RandomizedHadamard,
    RandomOrthogonal,
    fwht,
    hadamard_matrix,
    hadamard_supported,
    random_orthogonal,
    rotation,
)

SIZES = [1, 2, 8, 12, 20, 24, 28, 56, 64, 256, 384, 640, 1536]


@pytest.mark.parametrize("m", [12, 20, 28])
def test_paley_hadamard_orders(m):
    h = hadamard_matrix(m)
    assert set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, m * np.eye(m))


def test_fwht_matches_sylvester():
    h2 = np.array([[1.0, 1.0], [1.0, -1.0]])
    h = np.array([[1.0]])
    for _ in range(5):
        h = np.kron(h, h2)
    np.testing.assert_array_equal(fwht(np.eye(32)), h)


@pytest.mark.parametrize("n", SIZES)
def test_randomized_hadamard_orthogonal_and_inverse(n):
    r = RandomizedHadamard(n, seed=3)
    u = r.matrix()
    assert np.max(np.abs(u @ u.T - np.eye(n))) < 1e-12
    x = np.random.default_rng(0).standard_normal((3, 2, n))
    np.testing.assert_allclose(r.apply(x), x @ u.T, atol=1e-12)
    np.testing.assert_allclose(r.inverse(r.apply(x)), x, atol=1e-12)


def test_seed_changes_rotation_and_is_reproducible():
    a = RandomizedHadamard(64, seed=1).matrix()
    np.testing.assert_array_equal(a, RandomizedHadamard(64, seed=1).matrix())
    assert not np.allclose(a, RandomizedHadamard(64, seed=2).matrix())


def test_float32_kept():
    x = np.ones((4, 384), np.float32)
    assert RandomizedHadamard(384, 0).apply(x).dtype == np.float32


@pytest.mark.parametrize("n", [3, 36, 100, 104])
def test_unsupported_n_error_message(n):
    assert not hadamard_supported(n)
    with pytest.raises(ValueError, match="no Hadamard matrix of order"):
        RandomizedHadamard(n, 0)
    rot = rotation(n, 0)
    assert isinstance(rot, RandomOrthogonal)
    with pytest.raises(ValueError):
        rotation(n, 0, kind="hadamard")


def test_wrong_length_rejected():
    with pytest.raises(ValueError, match="last axis"):
        RandomizedHadamard(8, 0).apply(np.ones(7))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**31))
def test_random_orthogonal(n, seed):
    u = random_orthogonal(n, seed)
    assert np.max(np.abs(u @ u.T - np.eye(n))) < 1e-12
    r = RandomOrthogonal(n, seed)
    x = np.random.default_rng(seed).standard_normal((2, n))
    np.testing.assert_allclose(r.inverse(r.apply(x)), x, atol=1e-12)
    np.testing.assert_allclose(r.apply(x), x @ u.T, atol=1e-12)
