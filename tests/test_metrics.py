import dataclasses

import numpy as np
import pytest

import mmquant as mq
from mmquant import core
from mmquant.core import Encoded, Quantizer, register
from mmquant.metrics import gap_bits, gap_db, product_error_from, relative_mse, sqnr_db
from mmquant.packing import pack, unpack


@dataclasses.dataclass(frozen=True)
class Half(Quantizer):
    """Test-only: uniform grid of step ``step`` (8-bit codes) -- a known, simple error."""

    step: float = 0.5

    def _encode(self, x):
        c = np.clip(np.rint(x / self.step) + 128, 0, 255).astype(np.uint8)
        return Encoded(pack(c, 8), {}, x.shape, self.spec)

    def _decode(self, enc):
        return (unpack(enc.codes, 8, enc.entries).astype(np.float64) - 128).reshape(
            enc.shape
        ) * self.step


@pytest.fixture(autouse=True)
def _registered():
    register("testhalf")(Half)
    yield
    del core._REGISTRY["testhalf"]


def test_product_error_matches_definition():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 8))
    b = rng.standard_normal((512, 6))
    rep = mq.product_error(a, b, "testhalf:step=0.25")
    ah = np.rint(a / 0.25) * 0.25
    bh = np.rint(b / 0.25) * 0.25
    err = np.sum((a.T @ b - ah.T @ bh) ** 2) * 512 / (np.sum(a**2) * np.sum(b**2))
    assert rep.error == pytest.approx(err, rel=1e-12)
    assert rep.rate == 8.0 and rep.rate_a == 8.0 and rep.rate_b == 8.0
    assert rep.gamma == pytest.approx(float(mq.theory.gamma(8.0)))
    assert rep.gap_db == pytest.approx(10 * np.log10(err / rep.gamma))
    assert rep.spec_a == rep.spec_b == "testhalf:step=0.25"
    assert set(rep.to_json()) >= {"error", "sqnr_db", "gap_db", "gap_bits"}


def test_error_normalisation_is_per_entry_for_unit_gaussians():
    # With independent additive noise of variance s² on both sides, D ≈ 2s² + s⁴ per entry.
    rng = np.random.default_rng(1)
    n, k = 4096, 64
    a, b = rng.standard_normal((n, k)), rng.standard_normal((n, k))
    s = 0.1
    err, _ = product_error_from(
        a, b, a + s * rng.standard_normal(a.shape), b + s * rng.standard_normal(b.shape)
    )
    assert err == pytest.approx(2 * s**2 + s**4, rel=0.03)


def test_gap_helpers():
    g4 = float(mq.theory.gamma(4.0))
    assert gap_db(g4, 4.0) == pytest.approx(0.0, abs=1e-12)
    assert gap_bits(g4, 4.0) == pytest.approx(0.0, abs=1e-9)
    assert gap_bits(float(mq.theory.gamma(3.0)), 4.0) == pytest.approx(1.0)
    assert sqnr_db(np.ones(4), np.ones(4)) == np.inf
    assert sqnr_db(np.ones(4), np.zeros(4)) == pytest.approx(0.0)
    assert relative_mse(np.array([2.0]), np.array([1.0])) == 0.25


def test_matmul_from_encodings():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((64, 3)), rng.standard_normal((64, 5))
    q = mq.get("testhalf")
    c = mq.matmul(q.encode(a.T), q.encode(b.T))
    np.testing.assert_allclose(c, q.quantize(a.T) @ q.quantize(b.T).T)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        mq.matmul(q.encode(a.T), q.encode(b[:10].T))


@pytest.mark.parametrize(
    "a, b, exc, msg",
    [
        (np.ones((4, 2)), np.ones((5, 2)), ValueError, "same number of rows"),
        (np.ones(4), np.ones((4, 2)), ValueError, "A must be 2-D"),
        (np.ones((4, 2)), np.full((4, 2), np.nan), ValueError, "B contains non-finite"),
        (np.zeros((4, 2)), np.ones((4, 2)), ValueError, "all zeros"),
        (np.ones((4, 2), bool), np.ones((4, 2)), TypeError, "unsupported dtype"),
    ],
)
def test_product_error_bad_input(a, b, exc, msg):
    with pytest.raises(exc, match=msg):
        mq.product_error(a, b, "testhalf")


# ---------------------------------------------------------------------------------------------
# Edges: the normalised error is defined (or refused with ValueError), never ZeroDivisionError
# ---------------------------------------------------------------------------------------------
def _ab(seed=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((64, 4)), rng.standard_normal((64, 3))


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1.0, 1e160, 1e200])
def test_product_error_is_scale_invariant_at_the_float64_edges(scale):
    a, b = _ab()
    ref = product_error_from(a, b, a * 1.01, b)
    got = product_error_from(a * scale, b * scale, a * scale * 1.01, b * scale)
    assert got[0] == pytest.approx(ref[0], rel=1e-9)
    assert got[1] == pytest.approx(ref[1], rel=1e-9)


def test_power_of_two_scaling_leaves_ordinary_numbers_unchanged():
    a, b = _ab(6)
    ah, bh = a + 0.01, b - 0.02
    c, ch = a.T @ b, ah.T @ bh
    err = float(np.sum((c - ch) ** 2)) * 64 / (float(np.sum(a * a)) * float(np.sum(b * b)))
    assert product_error_from(a, b, ah, bh)[0] == err  # bit for bit (powers of two are exact)
    assert sqnr_db(c, ch) == 10 * np.log10(float(np.sum(c * c)) / float(np.sum((c - ch) ** 2)))


def test_product_error_edge_values():
    a, b = _ab()
    with pytest.raises(ValueError, match="all zeros"):
        product_error_from(np.zeros_like(a), b, np.zeros_like(a), b)
    with pytest.raises(ValueError, match="all zeros"):
        mq.product_error(a, np.zeros_like(b), "testhalf")
    # a zero product AᵀB (orthogonal columns): error defined, SQNR −inf, exact → 0 and +inf
    ao = np.array([[1.0, 0.0], [0.0, 0.0]])
    bo = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert product_error_from(ao, bo, ao, bo) == (0.0, np.inf)
    err, sq = product_error_from(ao, bo, ao, bo + np.array([[0.5, 0.0], [0.0, 0.0]]))
    assert err > 0 and sq == -np.inf
    rep = mq.product_error(ao, bo, "testhalf")
    assert rep.error == 0.0 and rep.gap_db == -np.inf and rep.gap_bits == -np.inf
    # constant data
    rep = mq.product_error(np.ones((16, 2)), np.full((16, 3), 7.0), "testhalf:step=0.3")
    assert np.isfinite(rep.error) and np.isfinite(rep.gap_db)
    # an overflowing reconstruction: infinite error, not NaN, not an exception
    err, sq = product_error_from(a, b, a * 1e300, b * 1e300)
    assert err == np.inf and sq == -np.inf
    with pytest.raises(ValueError, match="finite"):
        product_error_from(a * np.inf, b, a, b)
    with pytest.raises(ValueError, match="differ"):
        product_error_from(a, b, a[:, :2], b)


def test_gap_helpers_at_the_edges():
    assert gap_db(0.1, 600.0) == np.inf  # Γ(600) underflows to 0
    assert gap_db(np.inf, 4.0) == np.inf
    assert np.isnan(gap_db(np.nan, 4.0)) and np.isnan(gap_bits(np.nan, 4.0))
    assert gap_bits(np.inf, 4.0) == 4.0 and gap_bits(1.0, 2.5) == 2.5
    assert gap_db(0.0, 4.0) == -np.inf and gap_bits(0.0, 4.0) == -np.inf
    assert sqnr_db(np.zeros(3), np.zeros(3)) == np.inf
    assert sqnr_db(np.zeros(3), np.ones(3)) == -np.inf
    assert sqnr_db(np.full(3, 1e-300), np.full(3, 2e-300)) == pytest.approx(0.0)
    # a tiny matrix with a large stored codebook: rate ≈ 8272 bits/entry, Γ(rate) = 0
    rep = mq.product_error(np.ones((1, 1)), np.ones((1, 1)), "datacompander:bits=8")
    assert rep.gamma == 0.0 and rep.gap_db == np.inf and np.isfinite(rep.gap_bits)


def test_exact_product_reused_gives_the_same_numbers():
    from mmquant.metrics import exact_product, product_error_of

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((96, 5)), rng.standard_normal((96, 7))
    q = mq.get("int:bits=4,group=32")
    ea, eb = q.encode(a.T), q.encode(b.T)
    ex = exact_product(a, b)
    assert product_error_of(a, b, ea, eb, exact=ex) == product_error_of(a, b, ea, eb)
    with pytest.raises(ValueError, match="exact product of shapes"):
        product_error_of(a, b, ea, eb, exact=exact_product(a[:, :3], b))
