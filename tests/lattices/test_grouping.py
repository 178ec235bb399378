"""Joint coding of the scale indices of a group of blocks under a weight budget."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.lattices import grouping as gr


def _allowed(w, g, budget):
    return [s for s in itertools.product(range(len(w)), repeat=g) if sum(w[i] for i in s) <= budget]


@settings(max_examples=40, deadline=None)
@given(
    w=st.lists(st.integers(0, 3), min_size=2, max_size=4).filter(lambda w: min(w) == 0),
    g=st.integers(1, 5),
    budget=st.integers(0, 8),
)
def test_count_rank_unrank_against_enumeration(w, g, budget):
    """Ranks are the lexicographic positions among the allowed sequences; unrank inverts."""
    w = tuple(w)
    seqs = _allowed(w, g, budget)
    assert gr.count(w, g, budget) == len(seqs)
    a = np.array(seqs, np.int64).reshape(-1)
    r = gr.rank(a, w, g, budget)
    np.testing.assert_array_equal(r, np.arange(len(seqs)))
    np.testing.assert_array_equal(gr.unrank(r, w, g, budget, a.size), a)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("n", [13, 15])
def test_choose_is_the_least_error_allowed_sequence(backend, n):
    """Brute force over every allowed sequence of every group (the last one shorter)."""
    w, g, budget = (0, 1, 2, 3), 5, 5
    err = np.random.default_rng(n).random((n, 4))
    a = gr.choose(err, w, g, budget, backend=backend)
    total = 0.0
    for lo in range(0, n, g):
        e = err[lo : lo + g]
        best = min(sum(e[i, s[i]] for i in range(len(e))) for s in _allowed(w, len(e), budget))
        mine = a[lo : lo + g]
        assert sum(w[j] for j in mine) <= budget
        assert np.isclose(e[np.arange(len(e)), mine].sum(), best, rtol=0, atol=1e-12)
        total += best
    assert np.isclose(gr.least_error(err, w, g, budget, backend=backend), total)


def test_numba_and_numpy_agree_bit_for_bit():
    rng = np.random.default_rng(3)
    err = rng.random((20011, 4))
    err[::5, 2] = err[::5, 1]  # ties
    err[::7] = 0.5
    w, g, budget = (0, 1, 2, 4), 32, 30
    np.testing.assert_array_equal(
        gr.choose(err, w, g, budget, backend="numpy"), gr.choose(err, w, g, budget, backend="numba")
    )
    assert gr.least_error(err, w, g, budget, "numpy") == gr.least_error(err, w, g, budget, "numba")


def test_pack_round_trip_and_size():
    w, g, budget, n = (0, 1, 2, 4), 32, 28, 1000  # 31 groups of 32 and one of 8
    a = gr.choose(np.random.default_rng(4).random((n, 4)), w, g, budget)
    r = gr.rank(a, w, g, budget)
    data = gr.pack(r, w, g, budget, n)
    back, used = gr.unpack(data, w, g, budget, n)
    np.testing.assert_array_equal(back, r)
    assert used == data.size
    np.testing.assert_array_equal(gr.unrank(back, w, g, budget, n), a)
    bits = gr.group_bits(w, g, budget, n)
    assert bits == 31 * int(np.ceil(np.log2(gr.count(w, 32, budget)))) + int(
        np.ceil(np.log2(gr.count(w, 8, budget)))
    )
    assert 8 * data.size - bits < 16 * 8 * 8  # padding: under 16 bytes per 16-bit field


def test_bad_input_is_refused():
    w = (0, 1, 2, 4)
    with pytest.raises(ValueError, match="exceed 2"):
        gr.choose(np.zeros((64, 4)), w, 64, 200)
    with pytest.raises(ValueError, match="admits no"):
        gr.choose(np.zeros((3, 2)), (1, 2), 3, 0)
    with pytest.raises(ValueError, match="shape"):
        gr.choose(np.zeros((8, 3)), w, 4, 5)
    with pytest.raises(ValueError, match="budget"):
        gr.rank(np.array([3, 3, 3]), w, 3, 5)
    with pytest.raises(ValueError, match="corrupt codes"):
        gr.unrank(np.array([gr.count(w, 3, 5)], np.uint64), w, 3, 5, 3)
    with pytest.raises(ValueError, match="ends after"):
        gr.unpack(np.zeros(1, np.uint8), w, 32, 28, 64)
