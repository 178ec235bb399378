"""Tests of mmquant.rotations: Paley Hadamard matrices, fast WHT, orthogonality, inverses."""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.rotations import (
    BlockHadamard,
    RandomizedHadamard,
    RandomOrthogonal,
    fwht,
    hadamard_blocks,
    hadamard_matrix,
    hadamard_supported,
    random_orthogonal,
    rotation,
    rotation_scheme,
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
    assert isinstance(rot, BlockHadamard)  # never the O(n²) Haar matrix unless asked for
    assert rotation_scheme(n) == "block"
    assert isinstance(rotation(n, 0, kind="orthogonal"), RandomOrthogonal)
    with pytest.raises(ValueError):
        rotation(n, 0, kind="hadamard")


@pytest.mark.parametrize("n", SIZES)
def test_auto_rotation_of_supported_n_is_the_randomized_hadamard(n):
    rot = rotation(n, 5)
    assert rot == RandomizedHadamard(n, 5)
    assert rotation_scheme(n) == "hadamard"
    x = np.random.default_rng(1).standard_normal((2, n))
    np.testing.assert_array_equal(rot.apply(x), RandomizedHadamard(n, 5).apply(x))


@pytest.mark.parametrize("n", [*range(1, 70), 100, 104, 300, 1000, 1001, 9000, 40000, 2**20 + 1])
def test_hadamard_blocks_cover(n):
    b = hadamard_blocks(n)
    assert sum(b) == n
    assert list(b) == sorted(b, reverse=True)
    assert all(hadamard_supported(v) for v in b)
    assert 2 * b[0] > n
    if n >= 16:
        assert b[0] >= 0.8 * n
    assert len(b) <= 2 * math.log2(n) + 3
    if hadamard_supported(n):
        assert b == (n,)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 9, 13, 36, 100, 104, 300, 384, 1001])
def test_block_hadamard_orthogonal_and_inverse(n):
    r = BlockHadamard(n, seed=3)
    u = r.matrix()
    assert np.max(np.abs(u @ u.T - np.eye(n))) < 1e-12
    x = np.random.default_rng(0).standard_normal((3, 2, n))
    y = r.apply(x)
    np.testing.assert_allclose(y, x @ u.T, atol=1e-12)
    np.testing.assert_allclose(r.inverse(y), x, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


@pytest.mark.parametrize("n", [9000, 40000])
def test_block_hadamard_large_n_inverse_and_norms(n):
    r = rotation(n, seed=11)
    x = np.random.default_rng(n).standard_normal((2, n))
    y = r.apply(x)
    np.testing.assert_allclose(r.inverse(y), x, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)


def test_block_hadamard_seeded():
    x = np.random.default_rng(0).standard_normal((2, 1001))
    a = BlockHadamard(1001, seed=1).apply(x)
    np.testing.assert_array_equal(a, rotation(1001, 1).apply(x.copy()))
    assert not np.allclose(a, BlockHadamard(1001, seed=2).apply(x))


@pytest.mark.parametrize("n", [7, 100, 300, 1001, 9000, 40000])
@pytest.mark.parametrize("seed", [7, 8])
def test_block_hadamard_spreads_every_spike(n, seed):
    """Every spike e_j is spread: no entry above the sub-Gaussian bound √(6·ln(2n)/b₁) (variance
    proxy 1/b₁), participation ratio 1/Σ y⁴ above n/8 (≈ n/3 as for a Haar rotation)."""
    r = BlockHadamard(n, seed=seed)
    b1 = r.blocks[0]
    cols = np.arange(n) if n <= 1001 else np.linspace(0, n - 1, 200).astype(int)
    spikes = np.zeros((cols.size, n))
    spikes[np.arange(cols.size), cols] = 1.0
    y = r.apply(spikes)
    assert np.max(np.abs(y)) <= math.sqrt(6 * math.log(2 * n) / b1)
    participation = 1.0 / np.sum(y**4, axis=1)
    assert participation.min() >= n / 8
    assert np.median(participation) >= n / 4


def test_block_hadamard_state_and_memory_are_linear():
    """O(n) state (2n signs, a few blocks) and a peak of a few copies of the input: the Haar
    matrix of n = 40000 took 12 GiB."""
    n = 40000
    r = rotation(n, 0)
    assert isinstance(r, BlockHadamard)
    assert r.signs.shape == (2, n) and r.permutation.shape == (r.blocks[0],)
    assert len(r.blocks) <= 8
    x = np.random.default_rng(0).standard_normal((2, n))
    r.apply(x[:, :])  # signs cached
    tracemalloc.start()
    try:
        y = r.apply(x)
        r.inverse(y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * x.nbytes


def test_block_hadamard_float32_kept():
    x = np.ones((4, 100), np.float32)
    r = BlockHadamard(100, 0)
    assert r.apply(x).dtype == np.float32 and r.inverse(x).dtype == np.float32


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
