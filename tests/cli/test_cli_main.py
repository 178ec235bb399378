import json

import pytest

from mmquant.cli import main
from mmquant.cli.checks import parse_rates


def test_theory_gamma_table_and_plot(tmp_path, capsys):
    png = tmp_path / "g.png"
    assert main(["theory", "gamma", "--rates", "0.5,2", "--plot", str(png), "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "0.7177058" in out and "0.1210938" in out
    assert png.stat().st_size > 1000


def test_compare_small_run(tmp_path, capsys, monkeypatch):
    # shrink the default data so the test is quick; the full default run is exercised by .ci/run
    import mmquant.data as data

    monkeypatch.setitem(
        data._SOURCES, "gaussian", (lambda seed=0: [data.gaussian_pair(256, 16, 16, seed)], "")
    )
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    code = main(["compare", "--rates", "4", "--only", "int", "--json", str(js), "--plot", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    assert "int" in out and "gap dB" in out
    rec = json.loads(js.read_text())
    assert rec["results"] and all(r["family"] == "int" for r in rec["results"])
    gaps = [r["gap_db"] for r in rec["results"]]
    assert gaps == sorted(gaps)
    assert png.stat().st_size > 1000


def test_compare_errors_are_clean(capsys):
    assert main(["compare", "--rates", "abc"]) == 2
    assert "--rates must be comma-separated numbers" in capsys.readouterr().err
    assert main(["compare", "--data", "nope"]) == 2
    assert "unknown data source 'nope'" in capsys.readouterr().err
    assert main(["compare", "--only", "nosuchfamily"]) == 2


def test_parse_rates():
    assert parse_rates("2, 3.5") == [2.0, 3.5]
    assert parse_rates(None) is None
    with pytest.raises(ValueError, match=r"\(0, 16\]"):
        parse_rates("0")


def test_reproduce_lists_and_rejects_unknown(capsys):
    assert main(["reproduce"]) == 0
    assert main(["reproduce", "no-such-experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_compare_says_when_kernels_compile(tmp_path):
    """First run (empty numba cache): one line on stderr while kernels compile; none afterwards."""
    pytest.importorskip("numba")
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mmquant
    from mmquant.cli.compare import COMPILING

    root = str(Path(mmquant.__file__).parent.parent)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": root}
    env.pop("MMQUANT_KERNELS", None)
    cmd = [sys.executable, "-m", "mmquant", "compare", "--only", "int", "--rates", "4"]
    runs = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)]
    runs.append(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root))
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert "gap dB" in r.stdout
    assert runs[0].stderr.count(COMPILING) == 1, runs[0].stderr
    assert COMPILING not in runs[1].stderr, runs[1].stderr
    env["MMQUANT_KERNELS"] = "numpy"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0 and COMPILING not in r.stderr
