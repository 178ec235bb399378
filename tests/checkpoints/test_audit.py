"""Tests of mmquant/checkpoints/audit.py on the bundled model's own model.safetensors."""

import math

import numpy as np
import pytest

import mmquant as mq
from mmquant.checkpoints import audit, open_checkpoint, select_tensors

files = pytest.importorskip("mmquant.models.files")


@pytest.fixture(scope="module")
def model_dir():
    try:
        return files.find_model_dir()
    except FileNotFoundError:
        pytest.skip("bundled model not installed")


@pytest.fixture(scope="module")
def result(model_dir):
    ck = open_checkpoint(model_dir)
    names = select_tensors(ck, exclude=["pooler.*"])
    return audit(model_dir, names, ["int:bits=4", "nvfp4"])


def test_all_36_linear_layers_audited(result):
    expected = {f"{n}.weight" for n in files.linear_layer_names()}
    assert len(result.tensors) == 36 and set(result.tensors) == expected
    assert len(result.rows) == 72 and not any(r.failed for r in result.rows)
    assert "pooler.dense.weight" in result.passthrough
    assert "embeddings.word_embeddings.weight" in result.passthrough
    by_spec = {s["spec"]: s for s in result.summary()}
    assert by_spec["nvfp4"]["bits_per_param"] == pytest.approx(4.5, abs=1e-3)
    # NVFP4 beats absmax INT4 at the same 4.5 bits on these weights, both well above the limit
    assert 0 < by_spec["nvfp4"]["relative_mse"] < by_spec["int"]["relative_mse"] < 0.05
    assert all(0.5 < r.gap_bits < 2.0 for r in result.rows)


def test_numbers_match_a_direct_measurement(result, model_dir):
    name = "encoder.layer.2.intermediate.dense.weight"
    row = next(r for r in result.rows if r.tensor == name and r.spec == "nvfp4")
    w = open_checkpoint(model_dir).read(name).astype(np.float64)
    q = mq.get("nvfp4")
    enc = q.encode(w.astype(np.float32))
    e = w - q.decode(enc)
    eps = float((e**2).sum() / (w**2).sum())
    eps_row = float(np.mean((e**2).sum(1) / (w**2).sum(1)))
    assert row.shape == (1536, 384) and row.params == w.size and row.nbytes == enc.nbytes
    assert row.relative_mse == pytest.approx(eps, rel=1e-12)
    assert row.sqnr_db == pytest.approx(-10 * math.log10(eps), rel=1e-12)
    assert row.gap_bits == pytest.approx(enc.bits_per_entry + 0.5 * math.log2(eps_row), rel=1e-12)
    assert row.gap_db == pytest.approx(10 * math.log10(eps_row / 2 ** (-2 * row.bits_per_entry)))
    assert math.isnan(row.weighted_error)


def test_calibrated_audit_against_waterfilling(model_dir, tmp_path):
    from mmquant.models import save_calibration
    from mmquant.theory.highrate import waterfill_rate

    calib = save_calibration(tmp_path / "calib.safetensors", n_sentences=4)
    names = [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.3.attention.output.dense.weight",
    ]
    res = audit(model_dir, names, ["int:bits=4"], calib=calib)
    assert res.calibrated
    from mmquant.covariances import load_covariances

    covs = load_covariances(calib)
    assert len(covs) == 36
    for r in res.rows:
        w = open_checkpoint(model_dir).read(r.tensor).astype(np.float64)
        s = covs[r.tensor]
        e = w - mq.get("int:bits=4").quantize(w.astype(np.float32))
        num = np.trace(e @ s @ e.T)
        assert r.weighted_error == pytest.approx(num / np.trace(w @ s @ w.T), rel=1e-9)
        lam = np.clip(np.linalg.eigvalsh(s), 0, None)
        limit = waterfill_rate(lam, num / w.size, sigma2=float(np.mean(w**2)))
        assert r.wf_gap_bits == pytest.approx(r.bits_per_entry - limit, rel=1e-9)
        assert r.wf_gap_bits > 0 and math.isfinite(r.wf_gap_db)
    with pytest.raises(ValueError, match="no covariance"):
        audit(model_dir, ["pooler.dense.weight"], ["int:bits=4"], calib=calib)


def test_bad_arguments(model_dir):
    with pytest.raises(KeyError, match=r"no tensor named 'nope\.weight'"):
        audit(model_dir, ["nope.weight"], ["int:bits=4"])
    with pytest.raises(ValueError):
        audit(model_dir, ["pooler.dense.weight"], ["not-a-quantizer"])
    with pytest.raises(ValueError, match="no tensors"):
        audit(model_dir, [], ["int:bits=4"])
