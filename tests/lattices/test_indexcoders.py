"""The index coders: one per way of storing digits and scale indices, one interface."""

import numpy as np
import pytest

from mmquant.lattices import grouping, voronoi
from mmquant.lattices.indexcoders import GroupedIndex, PlainIndex, UnionIndex, index_coder
from mmquant.lattices.indexpack import digit_bits, union_bits
from mmquant.lattices.scales import Design

# (coder, design): the design's scales do not matter to the coder, only sizes, weights, budget
CASES = [
    (index_coder(9, 1), Design((9,), (0.3,))),
    (index_coder(14, 3), Design((14,) * 3, (0.2, 0.3, 0.4))),
    (index_coder((9, 10, 8), 3), Design((9, 10, 8), (0.2, 0.3, 0.4))),
    (index_coder(9, 3, mixed=True), Design((10, 9, 8), (0.2, 0.3, 0.4))),
    (index_coder(9, 4, group=8), Design((9,) * 4, (0.1, 0.2, 0.3, 0.4), (0, 1, 1, 2), 6)),
]


def test_the_factory_picks_one_coder_per_way():
    assert [type(c).__name__ for c, _ in CASES] == [
        "PlainIndex",
        "PlainIndex",
        "UnionIndex",
        "UnionIndex",
        "GroupedIndex",
    ]


def _blocks(coder, design, n, seed=0):
    """Random digits and scale indices that the coder's code allows."""
    rng = np.random.default_rng(seed)
    k = len(design.qs)
    if isinstance(coder, GroupedIndex):  # every group within the budget: cheapest scale mostly
        bi = np.zeros(n, np.int64)
        bi[::5] = rng.integers(0, k, bi[::5].size)
        bi = grouping.choose(
            rng.random((n, k)) * (bi[:, None] != np.arange(k)), design.weights, 8, design.budget
        )
    else:
        bi = rng.integers(0, k, n)
    qs = np.asarray(design.qs)
    digits = (rng.random((n, 8)) * qs[bi][:, None]).astype(np.int64)
    return digits, bi


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("n", [1, 7, 37])
def test_pack_unpack_round_trip_and_sizes(case, n):
    coder, design = CASES[case]
    digits, bi = _blocks(coder, design, n, seed=case + n)
    codes = coder.pack(digits, bi, design)
    side = coder.side(design)
    assert set(side) == set(coder.side_layout())
    d2, b2, qs = coder.unpack(codes, side, n)
    np.testing.assert_array_equal(d2, digits)
    np.testing.assert_array_equal(b2, bi)
    assert qs.tolist() == list(design.qs)
    size = coder.codes_layout(n)
    if isinstance(size, int):
        assert codes.size == size
    else:
        lo, hi = size
        assert lo <= codes.size and (hi is None or codes.size <= hi)
    stored = coder.stored_nbytes(side, n)
    assert stored is None or stored[0] == codes.size
    if isinstance(coder, PlainIndex):  # a scale index out of range (k = 3: 2 bits hold 3)
        if coder.k == 3:
            bad = coder.pack(digits, np.full(n, 3), design)
            with pytest.raises(ValueError, match="corrupt codes: a β index"):
                coder.unpack(bad, side, n)
    else:  # a byte more than the blocks take
        with pytest.raises(ValueError, match="corrupt codes"):
            coder.unpack(np.append(codes, np.uint8(0)), side, n)


def test_nominal_bits_asks_for_the_design_only_where_the_rate_depends_on_it():
    def refuse():
        raise AssertionError("the design was computed")

    assert PlainIndex(4, 14).nominal_bits(refuse) == digit_bits(14) + 2 / 8
    assert UnionIndex(3, (9, 10, 8)).nominal_bits(refuse) == union_bits((9, 10, 8)) / 8
    coder, design = CASES[-1]
    assert coder.nominal_bits(lambda: design) == digit_bits(9) + grouping.group_bits(
        design.weights, 8, design.budget, 8
    ) / (8 * 8)


def test_what_the_optimiser_may_vary():
    assert PlainIndex(3, 9).size_choices == () and not PlainIndex(3, 9).ordered
    mixed = UnionIndex(3, 9, mixed=True)
    assert mixed.size_choices == (8, 9, 10) and not mixed.ordered
    assert mixed.rate_factor([9, 9, 9]) == pytest.approx(4 ** (np.log2(3 * 9**8) / 8))
    given = UnionIndex(3, (9, 10, 8))
    assert given.size_choices == () and given.ordered and given.rate_factor([9, 10, 8]) == 1.0
    sel = [(9, 10), (9, 20)]
    assert PlainIndex(2, 9).fit(sel, {}, {}) == (sel, (), 0)


def test_the_coders_refuse_what_they_cannot_code():
    with pytest.raises(ValueError, match="group > 1"):
        index_coder(9, 3, group=4).check("no-overload", scales_given=False)
    with pytest.raises(ValueError, match="group > 1"):
        index_coder(9, 3, group=4).check("least-error", scales_given=True)
    with pytest.raises(ValueError, match="group > 1"):
        index_coder((9, 9, 9), 3, group=4)
    with pytest.raises(ValueError, match="at most 32 blocks per group"):
        index_coder(9, 4, group=33)
    with pytest.raises(ValueError, match="give betas=k"):
        index_coder(9, 3, mixed=True).check("least-error", scales_given=True)
    with pytest.raises(ValueError, match="union code too large"):
        index_coder((250,) * 4, 4)
    with pytest.raises(ValueError, match="q"):
        index_coder(1, 3)


def test_the_quantizer_delegates_to_its_coder():
    assert isinstance(voronoi.E8Voronoi(q=9, betas=3).coder, PlainIndex)
    assert isinstance(voronoi.E8Voronoi(q=(9, 10, 8), betas=3).coder, UnionIndex)
    assert voronoi.E8Voronoi(q=(9, 10, 8), betas=3).union
    assert isinstance(voronoi.D4Voronoi(q=9, betas=3, group=8).coder, GroupedIndex)


def test_public_names_still_importable_from_voronoi():
    for name in voronoi.__all__:
        assert getattr(voronoi, name) is not None
