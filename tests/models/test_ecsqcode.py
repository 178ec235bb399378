"""Entropy-coded scalar codes with measured rates (mmquant.models.ecsqcode)."""

from __future__ import annotations

import numpy as np
import pytest

from mmquant.models.actcodes import SCALE_BITS, TokenCode
from mmquant.models.channelcode import ChannelCode
from mmquant.models.ecsqcode import (
    MESSAGE_BITS,
    ECSQCode,
    escape_bits,
    fit_joint,
    measured_rate,
    reset_meters,
)


def _gauss(seed: int, tokens: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, n)) * np.geomspace(3.0, 0.05, n) + rng.normal(size=n)
    return x, rng.uniform(0.1, 2.0, n)


def test_counted_bits_bound_the_real_rans_streams() -> None:
    x, w = _gauss(0, 700, 12)
    code = ECSQCode.fit(x[:600], w, 4.0, block=8)
    held = x[600:].copy()
    held[3, 5] = 1e6  # far outside the support: escape with a long payload
    held[9, 2] = -40.0
    held[17, 0] = x[:600, 0].max() + 20 * x[:600, 0].std()  # beyond the widened support
    info = code.code_length(held)
    streams = code.encode(held)
    assert len(streams) == code.messages(len(held)) == 13
    for m, words in enumerate(streams):
        real = 32 * words.size
        inf = float(info[8 * m : 8 * (m + 1)].sum())
        # the rANS stream is the information plus at most its final state
        assert inf - 32 <= real <= inf + MESSAGE_BITS
    xq = code.quantize(held)
    np.testing.assert_array_equal(code.decode(streams, len(held)), xq)
    assert code.meter.bits == pytest.approx(info.sum() + MESSAGE_BITS * 13)
    assert code.meter.entries == held.size and code.meter.escapes >= 3
    assert code.bits_per_entry == pytest.approx(code.meter.bits / held.size)
    # the escaped values are reconstructed on the grid, not clipped to the support
    assert abs(xq[9, 2] + 40.0) <= code.step[2]
    assert abs(xq[17, 0] - held[17, 0]) <= code.step[0]


def test_per_token_messages_decode_and_count() -> None:
    x, w = _gauss(1, 300, 32)
    code = ECSQCode.fit(x[:250], w, 5.0, block=1)  # 2 bits per entry of message state
    held = x[250:260]
    streams = code.encode(held)
    assert len(streams) == 10
    total = sum(32 * s.size for s in streams)
    assert total <= code.code_length(held).sum() + MESSAGE_BITS * 10
    np.testing.assert_array_equal(code.decode(streams, 10), code.quantize(held))


def test_escape_bits() -> None:
    np.testing.assert_array_equal(escape_bits([0, 1, 2, 3, 6, 7]), [6, 7, 7, 8, 8, 9])


def test_ecsq_beats_channel_code_at_equal_measured_rate() -> None:
    x, w = _gauss(2, 3000, 32)
    fit, held = x[:2000], x[2000:]
    for rate in (3.0, 4.0):
        cc = ChannelCode.fit(fit, w, rate)
        ec = ECSQCode.fit(fit, w, rate - 0.1, block=0)
        e_cc = float(np.mean(((cc.quantize(held) - held) ** 2) @ w))
        e_ec = float(np.mean(((ec.quantize(held) - held) ** 2) @ w))
        assert ec.bits_per_entry <= cc.bits_per_entry == rate
        assert 10 * np.log10(e_cc / e_ec) > 1.0  # ≈ 2–3 dB measured


def test_steps_equalise_weighted_error_and_dead_coordinates_are_free() -> None:
    rng = np.random.default_rng(3)
    n = 8
    x = rng.normal(size=(2000, n)) * 2.0
    w = np.array([1.0, 4.0, 16.0, 1.0, 0.0, 1e-12, 1.0, 1.0])
    code = ECSQCode.fit(x[:1500], w, 3.0, block=0)
    live = w >= 1
    np.testing.assert_allclose(code.step[live] * np.sqrt(w[live]), code.step[0], rtol=1e-12)
    bits = code.tables.token_bits(np.rint((x[1500:] - code.mean) / code.step).astype(np.int64))
    assert bits.mean() < 3.0 * n
    # a coordinate without weight codes every value as its mean at (almost) no cost
    dead = code.take([4])
    assert dead.code_length(x[1500:, 4:5]).max() < 0.03  # the tail component's share


def test_joint_fit_shares_one_water_level() -> None:
    a, wa = _gauss(4, 400, 5)
    b, wb = _gauss(5, 400, 7)
    ca, cb = fit_joint([a, b], [wa, wb], 3.5, block=0)
    assert ca.step[0] * np.sqrt(wa[0]) == pytest.approx(cb.step[0] * np.sqrt(wb[0]))
    ca.quantize(a)
    cb.quantize(b)
    mean, worst, entries = measured_rate([ca, cb, ca])
    assert entries == a.size + b.size
    assert mean == pytest.approx((ca.meter.bits + cb.meter.bits) / entries)
    assert worst == pytest.approx(max(ca.bits_per_entry, cb.bits_per_entry))
    reset_meters([ca, cb])
    assert ca.meter.entries == 0 and np.isnan(measured_rate([ca, cb])[0])


def test_token_code_with_ecsq_counts_scales() -> None:
    x, _ = _gauss(6, 500, 16)
    x *= np.exp(np.random.default_rng(6).uniform(0, 3, size=(500, 1)))
    sw = np.eye(16)
    code, u, wts = TokenCode.prepare(x[:400], sw, transform="hadamard")
    tc = code.with_inner(ECSQCode.fit(u, wts, 6.0, block=1))
    tc.quantize(x[400:])
    mean, _, entries = measured_rate([tc])
    m = tc.inner.meter
    assert entries == 100 * 16 and m.messages == 100
    assert mean == pytest.approx((m.bits + SCALE_BITS * 100) / entries)
    assert tc.scale_bits == SCALE_BITS


def test_bad_inputs() -> None:
    x, w = _gauss(7, 100, 4)
    code = ECSQCode.fit(x, w, 3.0, block=0)
    with pytest.raises(ValueError, match="expected"):
        code.quantize(x[:, :3])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        code.quantize(bad)
    with pytest.raises(TypeError, match="real"):
        code.quantize(x.astype(complex))
    with pytest.raises(ValueError, match="NaN"):
        ECSQCode.fit(bad, w, 3.0)
    with pytest.raises(ValueError, match="weights"):
        ECSQCode.fit(x, -w, 3.0)
    with pytest.raises(ValueError, match="tokens"):
        ECSQCode.fit(x[:3], w, 3.0)
    with pytest.raises(ValueError, match="rate"):
        ECSQCode.fit(x, w, 12.0, block=1)  # 4 entries per message: 16 bits of state each
    with pytest.raises(ValueError, match=r"streams|corrupt"):
        code.decode(code.encode(x[:4]), 5)
    with pytest.raises(ValueError, match="streams"):
        code.decode(code.encode(x[:4]) * 2, 4)
    streams = code.encode(x[:4])
    with pytest.raises(ValueError, match=r"corrupt|uint32"):
        code.decode([s[:-1] for s in streams], 4)
    with pytest.raises(ValueError, match="decoder's limit"):  # one stream, 2^30 tokens claimed
        code.decode(streams, 1 << 30)
