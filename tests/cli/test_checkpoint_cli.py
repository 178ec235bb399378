"""Tests of ``mmquant audit / quantize-model`` (mmquant/cli/checkpoint.py), ``inspect`` and
``dequantize`` of an export folder, and ``compare --data`` with matrix files."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from mmquant.cli import main
from mmquant.covariances import load_plan

from ..checkpoints.conftest import write_sharded


@pytest.fixture
def toy(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    write_sharded(folder)
    return folder


def _err(capsys):
    return " ".join(capsys.readouterr().err.split())


def test_audit_budget_plan_and_quantize_model(toy, tmp_path, capsys):
    out = {k: tmp_path / f"a.{k}" for k in ("json", "csv", "png")}
    plan = tmp_path / "plan.json"
    argv = ["audit", str(toy), "-q", "int:bits=4 nvfp4;lloydmax:bits=3", "--budget", "4.25"]
    argv += ["--plan", str(plan), "--json", str(out["json"]), "--csv", str(out["csv"])]
    argv += ["--heatmap", str(out["png"]), "--per-tensor"]
    assert main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "3 tensors" in text and "bit allocation" in text and "optimal" in text
    rec = json.loads(out["json"].read_text())
    assert len(rec["results"]) == 9 and rec["allocation"]["bits_per_param"] <= 4.25
    assert out["csv"].read_text().count("\n") == 10
    assert out["png"].read_bytes()[:4] == b"\x89PNG"
    p = load_plan(plan)
    assert p.budget == 4.25 and set(p.specs) == set(rec["tensors"])
    dst = tmp_path / "q"
    assert main(["quantize-model", str(toy), "--plan", str(plan), "--out", str(dst)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(dst)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "3 quantized tensors" in shown and "passthrough" in shown
    assert main(["inspect", str(dst), "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"]["model.step"]["kind"] == "passthrough"
    assert main(["dequantize", str(dst), str(tmp_path / "m.npz")]) == 0
    with np.load(tmp_path / "m.npz") as z:
        assert sorted(z.files) == sorted(p.specs)
    assert main(["dequantize", str(dst), str(tmp_path / "full")]) == 0
    assert (tmp_path / "full" / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "{toy}", "-q", "int:bits=4", "--budget", "1"], "below the cheapest"),
        (["audit", "{tmp}/missing", "-q", "int:bits=4"], "no such file"),
        (["audit", "{toy}", "-q", "nope:x=1"], "nope"),
        (["audit", "{toy}", "-q", "int:bits=4", "--include", "ghost"], "no tensor named 'ghost'"),
        (["audit", "{toy}", "--plan", "{tmp}/p.json"], "--plan needs --budget"),
        (["quantize-model", "{toy}", "--out", "{tmp}/o"], "exactly one of --spec and --plan"),
        (["quantize-model", "{toy}", "--plan", "{tmp}/ghost.json", "--out", "{tmp}/o"], "ghost"),
        (["inspect", "{toy}"], "is a folder, but not one written by mmquant quantize-model"),
    ],
)
def test_bad_input_is_one_error_line(toy, tmp_path, capsys, argv, message):
    argv = [a.format(toy=toy, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert message in _err(capsys)


def test_plan_naming_an_unknown_tensor(toy, tmp_path, capsys):
    from mmquant.covariances import Plan, save_plan

    plan = save_plan(tmp_path / "p.json", Plan({"model.nothing.weight": "nvfp4"}, 4.0))
    assert (
        main(["quantize-model", str(toy), "--plan", str(plan), "--out", str(tmp_path / "o")]) == 2
    )
    assert "no tensor named 'model.nothing.weight'" in _err(capsys)


def test_compare_data_from_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    save_file({"layer.weight": w}, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "z.npz", x=x, y=x[:, :32])
    data = f"{tmp_path}/w.safetensors:layer.weight,{tmp_path}/x.npy;{tmp_path}/w.safetensors:layer.weight,{tmp_path}/z.npz:x"
    assert (
        main(["compare", "--data", data, "--only", "nvfp4", "--json", str(tmp_path / "c.json")])
        == 0
    )
    assert json.loads((tmp_path / "c.json").read_text())["pairs"] == 2
    bad = f"{tmp_path}/w.safetensors:layer.weight,{tmp_path}/z.npz:y"
    assert main(["compare", "--data", bad, "--only", "nvfp4"]) == 2
    assert "rows of the same length" in _err(capsys)
    assert main(["compare", "--data", f"{tmp_path}/z.npz,{tmp_path}/x.npy"]) == 2
    assert "holds 2 tensors" in _err(capsys)
    assert main(["compare", "--data", f"{tmp_path}/w.safetensors:nope,{tmp_path}/x.npy"]) == 2
    assert "no tensor named 'nope'" in _err(capsys)
