import itertools
import json
import math

import numpy as np
import pytest

from mmquant.experiments import experiments, run_experiment
from mmquant.experiments.scalar import baseline_methods, correlated_factors
from mmquant.experiments.scalar_qk import attention_errors


def _check_record(res, tmp_path):
    assert res.rows and all(len(r) == len(res.columns) for r in res.rows)
    json.dumps(res.to_json())  # JSON-safe
    png = tmp_path / f"{res.name}.png"
    res.plot(png)
    assert png.stat().st_size > 1000


def test_registered():
    names = experiments()
    for n in ("scalar-density", "scalar-matmul", "least-squares", "qk-activations"):
        assert n in names


def test_scalar_density(tmp_path):
    res = run_experiment("scalar-density", rhos=(0.0, 0.5, 0.8))
    _check_record(res, tmp_path)
    col = {c: i for i, c in enumerate(res.columns)}
    r8 = res.rows[2]
    assert r8[col["C*"]] == pytest.approx(4.387589, abs=1e-6)
    assert r8[col["gain dB"]] == pytest.approx(1.504, abs=1e-3)
    assert r8[col["peak u"]] == pytest.approx(1.198958, abs=1e-6)
    assert r8[col["V λ* K=16"]] == pytest.approx(3.4154e-2, rel=5e-3)
    assert r8[col["V uniform K=16"]] == pytest.approx(6.3840e-2, rel=5e-3)
    assert res.rows[1][col["peak u"]] == 0.0


def test_correlated_factors():
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.7, -0.5):
        a, b = correlated_factors(64, 4096, 64, rho, rng)
        # pairs (A_il, B_lj) for fixed i, j across l
        c = np.mean([np.corrcoef(a[i], b[:, j])[0, 1] for i, j in [(0, 0), (3, 5), (10, 2)]])
        assert c == pytest.approx(rho, abs=0.05)
        assert np.std(a) == pytest.approx(1.0, abs=0.05)


def test_scalar_matmul_small(tmp_path):
    res = run_experiment("scalar-matmul", rhos=(0.8,), bits=(4, 6))
    _check_record(res, tmp_path)
    recs = res.details["records"]
    for r in recs:
        if r["method"] == "lambda*":
            # the exact quadrature prediction matches the measure (sampling noise, RMS ≠ 1: 20%)
            assert r["rel_error"] == pytest.approx(r["pred_exact"], rel=0.2)
            assert r["rate"] == pytest.approx(r["bits"] + 16 / 256)
    by = {(r["bits"], r["method"]): r["rel_error"] for r in recs}
    assert by[(6, "lambda*")] < by[(6, "lloyd-max")] < by[(6, "uniform")]


def test_least_squares_small(tmp_path):
    res = run_experiment("least-squares", rhos=(0.5,), bits=(4,), n_obs=1024, dim=8, trials=2)
    _check_record(res, tmp_path)
    for r in res.details["records"]:
        assert 0 < r["x_rel_error"] < 0.5
        assert 0 < r["gram_rel_error"] < 0.1


def test_baseline_methods_labels():
    methods, _ = baseline_methods(4, 0.8)
    assert {"lambda*", "lambda*+lloyd", "data-product", "lloyd-max", "uniform"} <= set(methods)
    x = np.random.default_rng(0).standard_normal((8, 64))
    for meth in methods.values():
        xh, rate = meth(x, x)
        assert xh.shape == x.shape and rate > 4


def test_attention_errors_brute_force():
    rng = np.random.default_rng(0)
    offs = np.array([0, 5, 12, 30])
    q, k = rng.standard_normal((30, 8)), rng.standard_normal((30, 8))
    qh, kh = q + 0.1 * rng.standard_normal(q.shape), k + 0.1 * rng.standard_normal(k.shape)
    mse = kl = n = 0.0
    for a, b in itertools.pairwise(offs):
        s = q[a:b] @ k[a:b].T / math.sqrt(8)
        sh = qh[a:b] @ kh[a:b].T / math.sqrt(8)
        mse += float(np.sum((s - sh) ** 2))
        n += s.size
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ph = np.exp(sh - sh.max(1, keepdims=True))
        ph /= ph.sum(1, keepdims=True)
        kl += float(np.sum(p * np.log(p / ph)))
    m, k_ = attention_errors(q, k, qh, kh, offs)
    assert m == pytest.approx(mse / n, rel=1e-12)
    assert k_ == pytest.approx(kl / 30, rel=1e-9)
    assert attention_errors(q, k, q, k, offs) == (0.0, pytest.approx(0.0, abs=1e-12))


def test_qk_activations_small(tmp_path):
    pytest.importorskip("safetensors")
    try:
        res = run_experiment("qk-activations", bits=4, n_fit=8, n_eval=8, layers=[0], refine=3)
    except (FileNotFoundError, ModuleNotFoundError) as exc:  # bundled model not installed
        pytest.skip(f"bundled model unavailable: {exc}")
    _check_record(res, tmp_path)
    assert len(res.details["per_head"]) == 12
    for row in res.rows[1:]:
        assert 0.0 <= row[4] <= 1.0 and 0.0 <= row[5] <= 1.0
    for h in res.details["per_head"]:
        assert all(v > 0 for v in h["mse"].values())
