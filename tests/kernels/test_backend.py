"""One backend switch: mmquant.kernels.resolve, honoured by every kernel call site."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmquant
from mmquant import kernels

# Encodes and decodes every registered family and every configuration of ``mmquant compare``
# with MMQUANT_KERNELS=numpy, then checks that numba was never imported.
SCRIPT = r"""
import sys
import numpy as np
import mmquant as mq
from mmquant.experiments.compare import default_quantizers
assert mq.__file__.startswith(sys.argv[1]), mq.__file__
rng = np.random.default_rng(0)
# weight-only families at a rate their per-column side information leaves room for
wonly = {"rtn": "rtn:rate=8.0", "gptq": "gptq:rate=8.0", "watersic": "watersic:rate=8.0"}
specs = [wonly.get(s, s) for s in mq.available()] + [q.spec for q in default_quantizers()]
for spec in specs:
    q = mq.get(spec)
    for x in (rng.standard_normal((16, 64)).astype(np.float32), rng.standard_normal((12, 40))):
        q.decode(q.encode(x))
bad = sorted(m for m in sys.modules if m == "numba" or m.startswith(("numba.", "llvmlite")))
bad += sorted(m for m in sys.modules if m.startswith("mmquant.kernels."))
print(len(specs), "specs;", "imported:", bad)
assert not bad, bad
"""


def test_numpy_backend_never_imports_numba():
    root = str(Path(mmquant.__file__).parent.parent)
    env = {**os.environ, "MMQUANT_KERNELS": "numpy", "PYTHONPATH": root}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, root], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "imported: []" in r.stdout


def test_resolve_values(monkeypatch):
    monkeypatch.delenv("MMQUANT_KERNELS", raising=False)
    assert kernels.resolve("numpy") == "numpy"
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    assert kernels.resolve() == "numpy"
    assert kernels.load("formats") is None
    assert not kernels.use_numba("auto")
    monkeypatch.setenv("MMQUANT_KERNELS", " NumPy ")  # case and spaces do not matter
    assert kernels.resolve("auto") == "numpy"
    monkeypatch.setenv("MMQUANT_KERNELS", "")  # empty means auto
    assert kernels.resolve("auto") in ("numpy", "numba")


def test_bad_values_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="backend must be"):
        kernels.resolve("gpu")
    monkeypatch.setenv("MMQUANT_KERNELS", "fast")
    with pytest.raises(ValueError, match="MMQUANT_KERNELS must be"):
        kernels.resolve()
    assert kernels.resolve("numpy") == "numpy"  # an explicit choice does not read it
    with pytest.raises(ValueError, match="no kernel module"):
        kernels.load("lattices", "numpy")


def test_without_numba(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.delenv("MMQUANT_KERNELS", raising=False)
    assert kernels.resolve("auto") == "numpy"
    assert kernels.load("lattice_block") is None
    with pytest.raises(ImportError, match="pip install numba"):
        kernels.resolve("numba")
    monkeypatch.setenv("MMQUANT_KERNELS", "numba")
    with pytest.raises(ImportError, match="MMQUANT_KERNELS='numba'"):
        kernels.resolve()
    with pytest.raises(ImportError, match="numba"):
        mmquant.get("int").encode([[1.0, 2.0]])


def test_with_numba(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.delenv("MMQUANT_KERNELS", raising=False)
    assert kernels.resolve() == "numba"
    assert kernels.load("formats").__name__ == "mmquant.kernels.formats"
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    assert kernels.resolve("numba") == "numba"  # an explicit request wins over the variable


def test_on_compile_reports_nothing_on_the_numpy_path(monkeypatch):
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    monkeypatch.setitem(sys.modules, "numba", None)  # would raise if it were imported
    seen = []
    with kernels.on_compile(seen.append):
        mmquant.get("int").encode([[1.0, 2.0]])
    assert seen == []


def test_on_compile_reports_outermost_kernel_compilations():
    numba = pytest.importorskip("numba")
    import mmquant.kernels.formats as kf

    def double(x):
        return x * 2

    double.__module__ = kf.__name__
    helper = numba.njit(double)  # compiled on the way: not reported

    def probe(x):  # a fresh dispatcher in the kernels' namespace: never cached
        return helper(x) + 1

    probe.__module__ = kf.__name__
    seen, ended = [], []
    with kernels.on_compile(seen.append, lambda n, t: ended.append((n, t))):
        assert numba.njit(probe)(3) == 7
    assert seen == ["formats.probe"]  # not the helper compiled on the way
    assert [n for n, _ in ended] == ["formats.probe"] and ended[0][1] > 0


@pytest.mark.parametrize(
    "env, want",
    [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "active"}, "active"), ({"GOMP_SPINCOUNT": "9"}, "")],
)
def test_openmp_threads_wait_passively_unless_told(env, want):
    """Importing the kernels makes OpenMP's idle threads sleep (they would spin and take the
    cores from numpy's BLAS), leaving a choice the user made alone."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    base["PYTHONPATH"] = str(Path(mmquant.__file__).parent.parent)
    code = "import os, mmquant.kernels; print(os.environ.get('OMP_WAIT_POLICY', ''))"
    r = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want
