"""``mmquant weights`` and ``mmquant reproduce weight-only`` on a few layers of MiniLM."""

import json

import pytest

pytest.importorskip("tokenizers")

from mmquant.cli import main
from mmquant.experiments.weight_only import weight_only


def test_weights_command_writes_json(tmp_path, capsys):
    out = tmp_path / "w.json"
    code = main(
        [
            "weights",
            "--method",
            "watersic",
            "--rate",
            "4",
            "--layers",
            "encoder.layer.5.attention.self",
            "--sentences",
            "64",
            "--eval-sentences",
            "4",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert [r["layer"].split(".")[-1] for r in data["layers"]] == ["query", "key", "value"]
    for r in data["layers"]:
        assert r["bits_per_weight"] == pytest.approx(4.0, abs=0.02)
        assert -1.0 < r["gap_bits"] < 1.0
    assert 0.99 < data["cosine_mean"] <= 1.0
    assert "gap" in capsys.readouterr().out


def test_weights_command_rejects_unknown_method():
    assert main(["weights", "--method", "bogus"]) == 2


def test_weight_only_experiment_table_and_plot(tmp_path):
    res = weight_only(
        rate=3.0,
        n_sentences=32,
        eval_sentences=4,
        methods=("rtn", "gptq", "gptq-rot", "watersic"),
        layers="encoder.layer.0.attention.output",
    )
    assert res.columns[2:] == ["gap rtn", "gap gptq", "gap gptq-rot", "gap watersic"]
    gaps = res.rows[0][2:]
    assert gaps[3] < gaps[1] < gaps[0]  # WaterSIC < GPTQ < RTN
    res.plot(tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000
    json.dumps(res.to_json())
