"""Product limits of MiniLM's layers (mmquant.models.limits) and the retrieval task's metrics."""

from __future__ import annotations

import numpy as np
import pytest

import mmquant as mq
from mmquant.models import find_model_dir
from mmquant.models.limits import product_error, product_limit, weight_covariance
from mmquant.models.retrieval import retrieval_pairs, retrieval_scores
from mmquant.theory.highrate import matmul_highrate

try:
    find_model_dir()
    HAVE_MODEL = True
except FileNotFoundError:
    HAVE_MODEL = False


def _cov(n: int, decades: float, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.geomspace(1.0, 10.0**-decades, n)
    return (q * lam) @ q.T


def test_limits_identity_and_highrate() -> None:
    n = 16
    lim = product_limit(np.eye(n), np.eye(n), 4.0)
    # white unit factors: relative error 2·2^{−2R} for both limits and the formula
    assert lim.generic == pytest.approx(2 * 2.0**-8)
    assert lim.aware == pytest.approx(2 * 2.0**-8)
    assert lim.highrate == pytest.approx(n * matmul_highrate(4.0) / n)
    rng = np.random.default_rng(0)
    a, b = _cov(n, 2.0, rng), _cov(n, 1.0, rng)
    hi = product_limit(a, b, 8.0)  # high rate: the waterfilled generic limit is matmul_highrate
    assert hi.generic == pytest.approx(hi.highrate, rel=1e-9)
    assert hi.aware <= hi.generic
    lo = product_limit(a, b, 1.0, 3.0)
    assert lo.aware <= lo.generic
    assert product_limit(a, b, 3.0, 1.0).generic != pytest.approx(lo.generic)


def test_limits_singular_weight_covariance_is_finite() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 12))  # rank 4 of 12, like output.dense (384 of 1536)
    x = rng.normal(size=(200, 12))
    lim = product_limit(weight_covariance(w), x.T @ x / 200, 4.0)
    assert 0 < lim.generic < 1 and 0 <= lim.aware <= lim.generic
    assert lim.highrate < lim.generic  # the high-rate formula sees det Σ_W = 0


def test_limit_below_measured_gaussian_monte_carlo() -> None:
    rng = np.random.default_rng(2)
    n, rows, tokens = 64, 256, 512
    sa, sb = _cov(n, 1.5, rng), _cov(n, 1.0, rng)
    a = rng.normal(size=(rows, n)) @ np.linalg.cholesky(sa).T
    b = rng.normal(size=(tokens, n)) @ np.linalg.cholesky(sb).T
    for spec in ("nvfp4", "int:bits=4,group=32", "e8:group=32"):
        q = mq.get(spec)
        ea, eb = q.encode(a), q.encode(b)
        err = product_error(a, b, q.decode(ea), q.decode(eb))
        lim = product_limit(a.T @ a / rows, b.T @ b / tokens, ea.bits_per_entry, eb.bits_per_entry)
        assert lim.generic <= err * 1.05, spec
        assert lim.aware <= lim.generic


def test_limits_errors() -> None:
    with pytest.raises(ValueError, match="square"):
        product_limit(np.ones((2, 3)), np.eye(2), 4.0)
    with pytest.raises(ValueError, match="same size"):
        product_limit(np.eye(2), np.eye(3), 4.0)
    with pytest.raises(ValueError, match="NaN"):
        product_limit(np.full((2, 2), np.nan), np.eye(2), 4.0)
    with pytest.raises(ValueError, match="rate"):
        product_limit(np.eye(2), np.eye(2), -1.0)
    with pytest.raises(ValueError, match="shapes"):
        product_error(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 3)))


def test_retrieval_scores_toy() -> None:
    e = np.eye(4)
    s = retrieval_scores(e, e)
    assert s.recall_at_1 == 1.0 and s.mrr == 1.0 and s.queries == 4
    # query 0 is closest to document 1, then to its own (rank 2); the others are exact
    q = e.copy()
    q[0] = [0.6, 0.8, 0.0, 0.0]
    s = retrieval_scores(q, e)
    assert list(s.ranks) == [2, 1, 1, 1]
    assert s.recall_at_1 == pytest.approx(0.75)
    assert s.mrr == pytest.approx((0.5 + 3) / 4)
    # a tie with another document counts as a miss
    q[0] = [1.0, 1.0, 0.0, 0.0]
    assert retrieval_scores(q, e).ranks[0] == 2
    # scale does not matter (cosine)
    assert retrieval_scores(3 * e, e).recall_at_1 == 1.0
    with pytest.raises(ValueError, match="same shape"):
        retrieval_scores(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="zeros"):
        retrieval_scores(np.zeros((2, 2)), np.eye(2))


def test_retrieval_pairs_disjoint_from_calibration() -> None:
    from mmquant.models.calibration import sentence_pool

    queries, docs = retrieval_pairs("evaluation")
    assert len(queries) == len(docs) >= 40
    calib = set(sentence_pool()[0::2])
    texts = " ".join(queries + docs)
    assert not any(s in texts for s in list(calib)[:200] if len(s) > 60)
    cq, _ = retrieval_pairs("calibration")
    assert not set(cq) & set(queries)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_layer_limits_below_measured_minilm() -> None:
    """For linear layers across the depth (8 calibration sentences), NVFP4 on W and X stays above
    the limit; and for heads of the first and last layer."""
    from mmquant.models import MiniLM, calibration_capture

    model = MiniLM.load()
    cap = calibration_capture(8)
    q = mq.get("nvfp4")
    for name in model.linear_names[::12]:
        w = np.asarray(model.weight(name), np.float64)
        x = np.asarray(cap.inputs[name], np.float64)
        ew, ex = q.encode(w), q.encode(x)
        err = product_error(w, x, q.decode(ew), q.decode(ex))
        lim = product_limit(
            weight_covariance(w), x.T @ x / len(x), ew.bits_per_entry, ex.bits_per_entry
        )
        assert lim.aware <= lim.generic <= err, name
    for layer, head in ((0, 0), (5, 11)):
        qh, kh = (np.asarray(a, np.float64) for a in cap.head(layer, head))
        eq, ek = q.encode(qh), q.encode(kh)
        err = product_error(qh, kh, q.decode(eq), q.decode(ek))
        lim = product_limit(qh.T @ qh / len(qh), kh.T @ kh / len(kh), 4.5, 4.5)
        assert lim.generic <= err


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_retrieval_unquantized_model_deterministic_and_far_above_chance() -> None:
    from mmquant.models import MiniLM
    from mmquant.models.retrieval import evaluate_retrieval

    model = MiniLM.load(np.float32)
    a = evaluate_retrieval(model)
    b = evaluate_retrieval(model)
    np.testing.assert_array_equal(a.ranks, b.ranks)
    assert a.queries == len(retrieval_pairs("evaluation")[0])
    # chance is 1/57 for recall@1; the model ranks its own document first for a third or more
    assert a.recall_at_1 >= 0.3 and a.mrr >= a.recall_at_1 and a.mrr > 0.45
    assert a.mrr == pytest.approx(np.mean(1.0 / a.ranks))
