"""GPTQ/LDLQ on a block format with static groups: ``gptq:base=nvfp4``, ``mxfp4``, ``nf4``, ``int``."""

from __future__ import annotations

import numpy as np
import pytest

import mmquant as mq
from mmquant.core import Encoded
from mmquant.io import load_one, save


def _correlated(a: int = 24, n: int = 64, rho: float = 0.6, seed: int = 0):
    """Weights and an AR(1)-correlated Σ_X (correlation ``rho^|i−j|``) with varied scales."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    scale = np.linspace(0.5, 2.0, n)
    sigma = rho ** np.abs(idx[:, None] - idx[None, :]) * np.outer(scale, scale)
    w = rng.standard_normal((a, n)).astype(np.float32)
    return w, sigma


def _wmse(w, w_hat, sigma):
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.trace(d @ sigma @ d.T) / d.size)


def _as_base(enc: Encoded, base: mq.Quantizer) -> Encoded:
    return Encoded(enc.codes, enc.side, enc.shape, base.spec)


@pytest.mark.parametrize("base", ["nvfp4", "mxfp4", "nf4", "int", "int:bits=3;group=16"])
def test_gptq_on_a_format_beats_the_format_at_the_same_rate(base):
    w, sigma = _correlated()
    q = mq.get(f"gptq:base={base}")
    fmt = q.base_quantizer()
    enc = q.encode(w, sigma=sigma)
    plain = fmt.encode(w)
    # the record is a record of the base format: same layout, same scales, same measured rate
    fmt.check(_as_base(enc, fmt))
    assert enc.bits_per_entry == plain.bits_per_entry
    assert enc.side.keys() == plain.side.keys()
    for key in plain.side:  # static groups: the scales of the original weights
        assert enc.side[key].tobytes() == plain.side[key].tobytes(), key
    out = q.decode(enc)
    assert out.tobytes() == fmt.decode(_as_base(enc, fmt)).tobytes()
    # error feedback lowers the Σ_X-weighted error
    e_gptq, e_plain = _wmse(w, out, sigma), _wmse(w, fmt.decode(plain), sigma)
    assert e_gptq < 0.8 * e_plain, (e_gptq, e_plain)
    assert enc.stats["wmse"] == pytest.approx(e_gptq, rel=1e-9)


def test_nvfp4_figures_and_identity_covariance():
    """With Σ_X = I the feedback has nothing to cancel: GPTQ on NVFP4 is plain NVFP4 (up to
    ties, which the damping's factor √(1+δ) may move by an ulp)."""
    w, _ = _correlated(seed=3)
    q, fmt = mq.get("gptq:base=nvfp4"), mq.get("nvfp4")
    out = q.decode(q.encode(w, sigma=np.eye(w.shape[1])))
    assert np.mean(out != fmt.quantize(w)) < 1e-3


def test_spec_keeps_the_base_and_files_round_trip(tmp_path):
    q = mq.get("gptq:base=int:bits=3,group=16".replace(",group", ";group"))
    assert q.spec == "gptq:base=int:bits=3;group=16" and mq.get(q.spec) == q
    assert mq.get("gptq:base=nvfp4").spec == "gptq:base=nvfp4"
    assert mq.get("gptq:base=int:bits=4").spec == "gptq:base=int"  # canonical: defaults dropped
    w, sigma = _correlated(a=8, n=48)
    enc = q.encode(w, sigma=sigma)
    save(tmp_path / "w.mmq", enc)
    got = load_one(tmp_path / "w.mmq")
    assert got.spec == q.spec
    assert mq.get(got.spec).decode(got).tobytes() == q.decode(enc).tobytes()


def test_dead_inputs_and_quantize_weights():
    w, sigma = _correlated(a=8, n=40)
    sigma[5, :] = sigma[:, 5] = 0.0  # a dead input: rounded without feedback, still stored
    wq = mq.get("gptq:base=mxfp4").quantize_weights(w, sigma)
    assert not wq.live[5] and wq.coding == "format:mx:e2m1"
    enc = mq.get("gptq:base=mxfp4").encode(w, sigma=sigma)
    assert np.array_equal(mq.get("gptq:base=mxfp4").decode(enc), wq.w_hat.astype(np.float32))
    plain = mq.get("mxfp4").quantize(w)
    assert np.array_equal(wq.w_hat[:, 5], plain[:, 5])  # the dead column is plain rounding


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ("gptq:base=e8", "not a block format"),
        ("gptq:base=rtn", "not a block format"),
        ("gptq:base=datacompander", "not a block format"),
        ("gptq:base=nosuch", "unknown quantizer"),
        ("gptq:base=nvfp4,rotate=true", "rotate is fixed by the base"),
        ("gptq:base=nvfp4,rate=3.0", "rate is fixed by the base"),
        ("gptq:base=nf4,grid=int", "grid is fixed by the base"),
    ],
)
def test_bad_bases_are_refused(spec, msg):
    with pytest.raises(ValueError, match=msg):
        mq.get(spec)


def test_a_record_of_another_format_is_refused():
    w, sigma = _correlated(a=4, n=32)
    enc = mq.get("gptq:base=nvfp4").encode(w, sigma=sigma)
    wrong = Encoded(enc.codes, enc.side, enc.shape, "gptq:base=mxfp4")
    with pytest.raises(ValueError, match="side information does not match"):
        mq.get("gptq:base=mxfp4").decode(wrong)
