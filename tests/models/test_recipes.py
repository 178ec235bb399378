"""Covariance-aware codes of mmquant.models.recipes: transforms, bit allocation, channel code."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmquant.models import find_model_dir
from mmquant.models.recipes import ChannelCode, allocate_bits, aware_scales, balance

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False


def test_balance_diagonalises_both() -> None:
    rng = np.random.default_rng(0)
    n = 12
    a = rng.normal(size=(50, n)) * np.geomspace(10, 0.1, n)
    b = rng.normal(size=(40, n))
    sa, sb = a.T @ a / 50, b.T @ b / 40
    t, ti, mu = balance(sa, sb, damp=0.0)
    np.testing.assert_allclose(t @ ti, np.eye(n), atol=1e-9)
    d = np.diag(np.sqrt(mu))
    np.testing.assert_allclose(t.T @ sa @ t, d, atol=1e-8 * mu.max())
    np.testing.assert_allclose(ti @ sb @ ti.T, d, atol=1e-8 * mu.max())
    np.testing.assert_allclose(np.sort(mu), np.sort(np.linalg.eigvals(sa @ sb).real), rtol=1e-8)
    # products are kept: (a T)(b T^{-T})ᵀ = a bᵀ
    np.testing.assert_allclose((a @ t) @ (b @ ti.T).T, a @ b.T, atol=1e-9)


def test_allocate_bits_matches_brute_force_on_convex_curves() -> None:
    rng = np.random.default_rng(1)
    var = rng.uniform(0.1, 10, 4)
    w = rng.uniform(0.1, 2, 4)
    curve = var[None, :] * 4.0 ** -np.arange(6)[:, None]  # D(b) = v·4^{-b}
    (bits,) = allocate_bits([curve], [w], 9)
    assert bits.sum() == 9
    best = min(
        (sum(w[i] * curve[b[i], i] for i in range(4)), b)
        for b in itertools.product(range(6), repeat=4)
        if sum(b) == 9
    )
    assert sum(w[i] * curve[bits[i], i] for i in range(4)) == pytest.approx(best[0])
    # a channel of zero weight gets nothing
    (bits,) = allocate_bits([curve], [np.array([1.0, 0.0, 1.0, 1.0])], 8)
    assert bits[1] == 0
    with pytest.raises(ValueError, match="weights"):
        allocate_bits([curve], [np.ones(3)], 4)


def test_channel_code_rate_and_error() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 16)) * np.geomspace(20, 0.05, 16) + 3.0
    code = ChannelCode.fit(x, np.ones(16), 4.0)
    assert code.bits.sum() == 64 and code.bits_per_entry == 4.0
    assert code.bits[0] > code.bits[-1]  # waterfilling: big channels get more bits
    xh = code.quantize(x)
    assert xh.shape == x.shape and xh.dtype == x.dtype
    err = np.mean((xh - x) ** 2)
    flat = np.mean((ChannelCode.fit(x, np.ones(16), 2.0).quantize(x) - x) ** 2)
    assert err < flat / 4  # two more bits per entry: at least 6 dB
    assert np.allclose(xh[:, code.bits == 0], code.mean[code.bits == 0])
    with pytest.raises(ValueError, match="expected"):
        code.quantize(np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        ChannelCode.fit(np.full((4, 2), np.nan), np.ones(2), 4.0)


def test_aware_scales() -> None:
    d = aware_scales(np.array([16.0, 1.0]), np.array([1.0, 16.0]))
    assert d[0] / d[1] == pytest.approx(4.0**0.5 * 4.0**0.5)  # (w/v)^{1/4} ratio = 256^{1/4}
    assert np.prod(d) == pytest.approx(1.0)


@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_fold_transforms_keeps_the_model() -> None:
    from mmquant.models import MiniLM, calibration_capture, calibration_sentences
    from mmquant.models.recipes import fold_transforms

    m = MiniLM.load(np.float64)
    cap = calibration_capture(8, "float64")
    mt = fold_transforms(m, cap)
    s = calibration_sentences(4, split="evaluation")
    np.testing.assert_allclose(mt.encode(s), m.encode(s), atol=1e-9)
    assert not np.allclose(
        mt.weight("encoder.layer.0.attention.self.query"),
        m.weight("encoder.layer.0.attention.self.query"),
    )


def test_weight_method_is_checked() -> None:
    from mmquant.models.recipes import aware_recipe, watersic_weights

    with pytest.raises(ValueError, match="method"):
        watersic_weights(object(), {}, 4.0, method="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_method"):
        aware_recipe(object(), 4.0, weight_method="nope")  # type: ignore[arg-type]


def test_act_and_qk_code_options_are_checked() -> None:
    from mmquant.models.actcodes import token_codes
    from mmquant.models.recipes import aware_recipe

    with pytest.raises(ValueError, match="act_code"):
        aware_recipe(object(), 4.0, act_code="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qk_code"):
        aware_recipe(object(), 4.0, qk_code="tcq?")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="codes='token'"):
        aware_recipe(object(), 4.0, act_code="ecsq", codes="static")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allocation"):
        token_codes(object(), {}, 4.0, allocation="joint", act_code="ecsq")
    with pytest.raises(ValueError, match="act_allocation='site'"):
        aware_recipe(object(), 4.0, act_code="tcq", act_allocation="joint")  # type: ignore
