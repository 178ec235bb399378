"""Calibration files and plans: round trips and hostile files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmquant.covariances import Plan, load_covariances, load_plan, save_covariances, save_plan

pytest.importorskip("safetensors")


def _cov(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((4 * n, n))
    return x.T @ x / len(x)


def test_covariances_round_trip(tmp_path):
    covs = {"a.weight": _cov(8), "b.weight": _cov(5, 1)}
    path = save_covariances(tmp_path / "c.safetensors", covs, {"a.weight": 32})
    f = load_covariances(path)
    assert set(f.covariances) == set(covs)
    for k, v in covs.items():
        np.testing.assert_array_equal(f[k], v)
        assert f[k].dtype == np.float64
    assert f.tokens == {"a.weight": 32}
    assert "a.weight" in f and len(f) == 2
    with pytest.raises(KeyError, match="no covariance for tensor 'zz'"):
        f["zz"]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.ones((3, 4)), "square"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), "not symmetric"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), "NaN or Inf"),
        (np.array([[-1.0, 0.0], [0.0, 1.0]]), "negative diagonal"),
        (np.eye(2, dtype=np.int64), "dtype"),
    ],
)
def test_bad_covariances_refused(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        save_covariances(tmp_path / "c.safetensors", {"w": bad})
    # The same matrix written by someone else is refused on reading too.
    from safetensors.numpy import save_file

    p = tmp_path / "hostile.safetensors"
    save_file({"w": bad}, str(p), metadata={"format": "mmquant-calib", "version": "1"})
    with pytest.raises(ValueError, match=match):
        load_covariances(p)


def test_not_a_calibration_file(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "w.safetensors"
    save_file({"w": np.eye(2)}, str(p))
    with pytest.raises(ValueError, match="not an mmquant calibration file"):
        load_covariances(p)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        load_covariances(junk)
    with pytest.raises(FileNotFoundError):
        load_covariances(tmp_path / "missing.safetensors")


def test_plan_round_trip_and_checks(tmp_path):
    plan = Plan({"a.weight": "int:bits=4,group=32", "b.weight": "nvfp4"}, budget=4.25)
    p = save_plan(tmp_path / "plan.json", plan)
    assert load_plan(p) == plan
    with pytest.raises((ValueError, KeyError)):
        save_plan(tmp_path / "x.json", Plan({"a.weight": "nosuchformat"}))
    bad = tmp_path / "bad.json"
    for obj, match in [
        ({"format": "other"}, "not an mmquant plan"),
        ({"format": "mmquant-plan", "version": 9, "specs": {}}, "version"),
        ({"format": "mmquant-plan", "version": 1, "specs": []}, "specs"),
        ({"format": "mmquant-plan", "version": 1, "specs": {"a": "nosuch"}}, "tensor 'a'"),
        ({"format": "mmquant-plan", "version": 1, "specs": {}, "budget": -1}, "budget"),
    ]:
        bad.write_text(json.dumps(obj))
        with pytest.raises(ValueError, match=match):
            load_plan(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON plan"):
        load_plan(bad)
