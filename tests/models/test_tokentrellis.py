"""Trellis-coded rate classes inside the token codes (mmquant.models.tokentrellis)."""

from __future__ import annotations

import numpy as np
import pytest

from mmquant.models import find_model_dir
from mmquant.models.actcodes import SCALE_BITS, TokenCode
from mmquant.models.channelcode import ChannelCode
from mmquant.models.tokentrellis import (
    TrellisChannelCode,
    TrellisRecord,
    class_table,
    stored_bits,
    trellis_curve,
)

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False


def _gauss(seed: int, tokens: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent Gaussian coordinates with spread variances and error weights."""
    rng = np.random.default_rng(seed)
    sd = np.geomspace(3.0, 0.2, n)
    x = rng.normal(size=(tokens, n)) * sd + rng.normal(size=n)
    w = np.geomspace(0.1, 2.0, n)[rng.permutation(n)]
    return x, w


def test_curve_decreasing_and_near_rate_distortion() -> None:
    c = trellis_curve(10)
    assert c[0] == 1.0 and np.all(np.diff(c) <= 0)
    db = 10 * np.log10(c[1:5]) + 6.0206 * np.arange(1, 5)  # gap to D(R) = 2^(−2R)
    assert np.all(db < 2.0), db  # the uniform scalar code is 4+ dB off at 4 bits


def test_round_trip_shape_rate_and_stored_bits() -> None:
    x, w = _gauss(0, 200, 40)
    code = TrellisChannelCode.fit(x, w, 3.25, L=10)
    assert code.bits.sum() == int(40 * 3.25)
    assert code.bits_per_entry == pytest.approx(3.25)
    rec = code.encode(x[:17])
    assert rec.tokens == 17
    assert stored_bits(code, rec) == 17 * int(code.bits.sum())
    for (b, idx, _), u in zip(code.classes, rec.symbols):
        assert u.dtype == np.uint8 and u.shape == (17, idx.size) and int(u.max()) < 2**b
    y = code.decode(rec)
    np.testing.assert_array_equal(y, code.quantize(x[:17]))
    assert y.shape == (17, 40)
    zero = code.bits == 0
    np.testing.assert_allclose(y[:, zero], np.broadcast_to(code.mean[zero], (17, zero.sum())))
    assert code.quantize(x[:5].astype(np.float32)).dtype == np.float32


def test_one_coordinate_class_uses_the_uniform_code() -> None:
    x, _ = _gauss(1, 100, 4)
    code = TrellisChannelCode.from_bits(x, np.array([2, 5, 5, 7]), L=10)
    rec = code.encode(x)
    assert [(b, L) for b, _, L in code.classes] == [(5, 10), (2, 0), (7, 0)]
    assert int(rec.symbols[1].max()) < 4 and code.gain[5] != 1.0
    e = code.quantize(x) - x
    assert np.mean(e**2) < 0.2 * np.mean((x - x.mean(0)) ** 2)


def test_beats_channel_code_on_gaussian_at_equal_rate() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 128)) * np.geomspace(2.0, 0.5, 128)
    w = np.ones(128)
    fit, test = x[:300], x[300:]
    tc = TrellisChannelCode.fit(fit, w, 4.0, L=10)
    cc = ChannelCode.fit(fit, w, 4.0)
    assert tc.bits_per_entry == cc.bits_per_entry == 4.0

    def werr(c: object) -> float:
        e = c.quantize(test) - test  # type: ignore[attr-defined]
        return float(np.sum(e * e * w))

    assert werr(tc) < 10 ** (-0.2) * werr(cc)  # at least 2 dB better


def test_inside_token_code_rate_is_exact() -> None:
    x, w = _gauss(3, 120, 48)
    code, u, wts = TokenCode.prepare(x, np.diag(w), transform="hadamard")
    tc = code.with_inner(TrellisChannelCode.fit(u, wts, 4.5 - SCALE_BITS / 48, L=10))
    assert tc.bits_per_entry == pytest.approx((int(48 * (4.5 - SCALE_BITS / 48)) + 8) / 48)
    assert tc.bits_per_entry <= 4.5
    assert tc.quantize(x).shape == x.shape


def test_bad_inputs() -> None:
    x, w = _gauss(4, 50, 16)
    with pytest.raises(ValueError, match="calibration data"):
        TrellisChannelCode.fit(x[:1], w, 4)
    with pytest.raises(ValueError, match="NaN"):
        TrellisChannelCode.fit(np.where(x > 2, np.nan, x), w, 4)
    with pytest.raises(ValueError, match="weights"):
        TrellisChannelCode.fit(x, w[:-1], 4)
    with pytest.raises(ValueError, match="weights"):
        TrellisChannelCode.fit(x, -w, 4)
    with pytest.raises(ValueError, match="rate"):
        TrellisChannelCode.fit(x, w, 9)
    with pytest.raises(ValueError, match="L"):
        TrellisChannelCode.fit(x, w, 4, L=8)
    with pytest.raises(ValueError, match="bits"):
        class_table(0, 10)
    code = TrellisChannelCode.fit(x, w, 4, L=10)
    with pytest.raises(ValueError, match="expected"):
        code.quantize(x[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        code.quantize(np.full((2, 16), np.inf))
    with pytest.raises(TypeError, match="dtype"):
        code.quantize(np.zeros((2, 16), complex))
    rec = code.encode(x[:4])
    with pytest.raises(ValueError, match="TrellisRecord"):
        code.decode(TrellisRecord(4, rec.symbols[:-1]))
    bad = list(rec.symbols)
    bad[0] = np.full_like(bad[0], 255)
    with pytest.raises(ValueError, match="must be <"):
        code.decode(TrellisRecord(4, tuple(bad)))
    bad[0] = bad[0][:, :-1]
    with pytest.raises(ValueError, match="uint8"):
        code.decode(TrellisRecord(4, tuple(bad)))
    with pytest.raises(ValueError, match="uint8"):  # a huge token count, small symbols
        code.decode(TrellisRecord(1 << 40, rec.symbols))
    with pytest.raises(ValueError, match="≥ 0"):
        code.decode(TrellisRecord(-1, rec.symbols))
    with pytest.raises(ValueError, match="bits must be"):
        TrellisChannelCode(code.mean, code.std, code.bits + 9, code.gain, code.clip, code.scalar)
    with pytest.raises(ValueError, match="bits must be"):
        TrellisChannelCode.from_bits(x, np.full(16, -1))
    with pytest.raises(ValueError, match="scalar_from"):
        TrellisChannelCode.fit(x, w, 4, scalar_from=0)


@pytest.mark.skipif(not HAVE_MODEL, reason="model not installed")
def test_all_heads_qk_code_and_tcq_qk_codes() -> None:
    from mmquant.models import (
        MiniLM,
        attention_logit_error,
        calibration_sentences,
        capture,
        quantize_model,
    )
    from mmquant.models.recipes import tcq_qk_codes

    m = MiniLM.load(np.float32)
    sents = calibration_sentences(6, split="evaluation")
    ref = capture(m, sents)
    seen: list[tuple[int, ...]] = []

    class Record:
        def quantize(self, x: np.ndarray) -> np.ndarray:
            seen.append(x.shape)
            return x

    same = capture(quantize_model(m, qk={(1, "q"): Record(), (1, "k"): Record()}), sents)
    assert seen == [(int(ref.lengths.sum()), 384)] * 2
    assert attention_logit_error(ref, same) == 0.0
    cal = capture(m, calibration_sentences(6))
    codes, total, entries = tcq_qk_codes(cal, 2, 12, 3.0)
    assert sorted(codes) == [(0, "k"), (0, "q"), (1, "k"), (1, "q")]
    assert entries == 4 * 384 and total == int(2 * 384 * 3.0) * 2
    assert all(c.bits_per_entry <= 8 for c in codes.values())
    got = capture(quantize_model(m, qk=codes, qk_layers=[0, 1]), sents)
    per = attention_logit_error(ref, got, per_head=True)
    assert np.all(per[:2] > 0) and np.mean(per[:2]) < 0.1  # 3 bits: a few percent


def test_convex_hull_of_curves() -> None:
    from mmquant.models.tokentrellis import _convex

    y = np.array([[1.0, 1.0], [0.3, 0.5], [0.1, 0.25], [0.1, 0.125], [0.01, 0.0625]])
    h = _convex(y)
    np.testing.assert_allclose(h[:, 1], y[:, 1])  # already convex: unchanged
    np.testing.assert_allclose(h[:, 0], [1.0, 0.3, 0.1, 0.055, 0.01])  # 3 bits: on the chord
    assert np.all(np.diff(h, 2, axis=0) >= -1e-15)


def test_token_codes_act_code_is_checked() -> None:
    from mmquant.models.actcodes import token_codes

    with pytest.raises(ValueError, match="act_code"):
        token_codes(object(), {}, 4.5, act_code="nope")
    with pytest.raises(ValueError, match="allocation='site'"):
        token_codes(object(), {}, 4.5, allocation="joint", act_code="tcq")
