"""Per-token-scaled activation codes after online transforms (mmquant.models.actcodes)."""

from __future__ import annotations

import numpy as np
import pytest

from mmquant.models import find_model_dir
from mmquant.models.actcodes import SCALE_BITS, TokenCode, hadamard_rotation, input_site

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False


def _data(rng: np.random.Generator, tokens: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated inputs with a token-to-token range of 100 and a weight of rank n/2."""
    mix = rng.normal(size=(n, n)) * np.geomspace(4, 0.1, n)[:, None]
    x = rng.normal(size=(tokens, n)) @ mix
    x *= np.exp(rng.uniform(0, np.log(100), size=(tokens, 1)))  # per-token range
    x += rng.normal(size=n) * 3  # static offsets
    w = rng.normal(size=(n // 2, n))
    return x, w.T @ w / w.shape[0]


def _werr(x: np.ndarray, xh: np.ndarray, sw: np.ndarray) -> float:
    e = xh - x
    return float(np.sum((e @ sw) * e) / np.sum((x @ sw) * x))


def test_hadamard_rotation_orthogonal() -> None:
    u = hadamard_rotation(24, seed=3)
    np.testing.assert_allclose(u @ u.T, np.eye(24), atol=1e-12)
    assert not np.allclose(u, hadamard_rotation(24, seed=4))


@pytest.mark.parametrize("transform", ["identity", "hadamard", "balance"])
def test_token_code_rate_shape_and_error(transform: str) -> None:
    rng = np.random.default_rng(0)
    x, sw = _data(rng, 600, 24)
    fit, held = x[:400], x[400:]
    code = TokenCode.fit(fit, sw, 4.5, transform=transform)
    # stored bits per token: Σ bits of the channel code + the 8-bit scale, never above the rate
    assert code.bits_per_entry <= 4.5
    assert code.inner.bits.sum() == int(24 * (4.5 - SCALE_BITS / 24))
    xh = code.quantize(held.astype(np.float32))
    assert xh.shape == held.shape and xh.dtype == np.float32
    e4 = _werr(held, code.quantize(held), sw)
    e2 = _werr(held, TokenCode.fit(fit, sw, 2.5, transform=transform).quantize(held), sw)
    assert e4 < e2 / 4  # two more bits per entry: at least 6 dB
    assert e4 < 2e-2


def test_dynamic_scale_follows_token_range() -> None:
    rng = np.random.default_rng(1)
    x, sw = _data(rng, 800, 16)
    dyn = TokenCode.fit(x[:500], sw, 4.5, transform="hadamard")
    stat = TokenCode.fit(x[:500], sw, 4.5, transform="hadamard", dynamic=False)
    assert stat.bits_per_entry == 4.5 and dyn.bits_per_entry == pytest.approx(4.5, abs=0.5)
    held = x[500:]
    assert _werr(held, dyn.quantize(held), sw) < _werr(held, stat.quantize(held), sw) / 4


def test_balance_beats_identity_on_the_weighted_error() -> None:
    rng = np.random.default_rng(2)
    x, sw = _data(rng, 1200, 32)
    held = x[800:]
    errs = {
        t: _werr(held, TokenCode.fit(x[:800], sw, 3.5, transform=t).quantize(held), sw)
        for t in ("identity", "balance")
    }
    assert errs["balance"] < errs["identity"]


def test_token_code_errors() -> None:
    rng = np.random.default_rng(3)
    x, sw = _data(rng, 100, 8)
    with pytest.raises(ValueError, match="sigma_w"):
        TokenCode.fit(x, np.eye(5), 4.0)
    with pytest.raises(ValueError, match="transform"):
        TokenCode.fit(x, sw, 4.0, transform="klt")
    with pytest.raises(ValueError, match="rate"):
        TokenCode.fit(x, sw, 0.5)  # below the 1 bit per entry of the scale
    code = TokenCode.fit(x, sw, 4.0)
    with pytest.raises(ValueError, match="expected"):
        code.quantize(np.ones((3, 5)))


def test_input_site() -> None:
    assert input_site("encoder.layer.0.attention.self.key") == "qkv"
    assert input_site("encoder.layer.3.attention.output.dense") == "context"
    assert input_site("encoder.layer.5.intermediate.dense") == "up"
    assert input_site("encoder.layer.5.output.dense") == "down"
    with pytest.raises(ValueError, match="linear layer"):
        input_site("pooler.dense")


@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_shared_qkv_input_coded_once() -> None:
    from mmquant.models import MiniLM, quantize_model

    class Counting:
        calls = 0

        def quantize(self, x: np.ndarray) -> np.ndarray:
            Counting.calls += 1
            return np.round(x * 8) / 8

    m = MiniLM.load(np.float32)
    c = Counting()
    qm = quantize_model(m, activations=dict.fromkeys(m.linear_names, c))
    e = qm.encode(["A cat sits on the mat."])
    # per layer: query/key/value share one call, then context, up and down inputs
    assert Counting.calls == 4 * m.config.num_layers
    qm2 = quantize_model(m, activations={n: Counting() for n in m.linear_names})
    np.testing.assert_array_equal(qm2.encode(["A cat sits on the mat."]), e)


@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_joint_allocation_keeps_the_mean_rate_and_lowers_the_objective() -> None:
    from mmquant.models import MiniLM, calibration_capture
    from mmquant.models.actcodes import token_codes
    from mmquant.models.limits import weight_covariance

    m = MiniLM.load(np.float32)
    cap = calibration_capture(4, "float32")
    rate = 4.5
    site = token_codes(m, cap.inputs, rate)
    joint = token_codes(m, cap.inputs, rate, allocation="joint")
    assert set(joint) == set(m.linear_names)
    p = "encoder.layer.0.attention.self."
    assert joint[p + "key"] is joint[p + "query"] is joint[p + "value"]
    names = [n for n in m.linear_names if not n.endswith(("self.key", "self.value"))]
    n_in = [site[n].mean.size for n in names]
    mean_bits = sum(joint[n].bits_per_entry * k for n, k in zip(names, n_in)) / sum(n_in)
    assert mean_bits <= rate + 1e-12
    assert mean_bits > rate - 0.01
    rates = {round(joint[n].bits_per_entry, 3) for n in names}
    assert len(rates) > 3  # the bits moved between inputs

    def objective(codes: dict) -> float:
        total = 0.0
        for n in names:
            x = np.asarray(cap.inputs[n], np.float64)
            e = np.asarray(codes[n].quantize(x), np.float64) - x
            if n.endswith("self.query"):
                q = n.rsplit(".", 1)[0]
                ws = [weight_covariance(m.weight(q + "." + s)) for s in ("query", "key", "value")]
            else:
                ws = [weight_covariance(m.weight(n))]
            total += sum(np.sum((e @ w) * e) / np.sum((x @ w) * x) for w in ws)
        return float(total)

    assert objective(joint) < objective(site)
    with pytest.raises(ValueError, match="allocation"):
        token_codes(m, cap.inputs, rate, allocation="greedy")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_sensitivity_gains_positive_per_input() -> None:
    from mmquant.models import MiniLM, calibration_capture
    from mmquant.models.actcodes import sensitivity_gains, token_codes

    m = MiniLM.load(np.float32)
    cap = calibration_capture(4, "float32")
    codes = token_codes(m, cap.inputs, 3.0)
    g = sensitivity_gains(m, cap.inputs, codes, cap.sentences[:2])
    inputs = [n for n in m.linear_names if not n.endswith(("self.key", "self.value"))]
    assert list(g) == inputs
    assert all(np.isfinite(v) and v > 0 for v in g.values())
    with pytest.raises(ValueError, match="targets"):
        sensitivity_gains(m, cap.inputs, codes, cap.sentences[:2], targets=(0.0, 1e-2))
