"""Kernels run when numba cannot write its cache (read-only installs): mmquant.kernels.numba_cache.

numba raises ``RuntimeError: cannot cache function ...: no locator available`` when a function is
decorated with ``cache=True`` and none of its cache folders (``NUMBA_CACHE_DIR``, ``__pycache__``
beside the source, the user's cache folder) can be written. The tests copy the package to a
temporary folder, make every cache folder unusable, and encode in a fresh process: the kernels
must compile without caching and give the same bytes as the numpy reference.

Root ignores file permissions, so the first test blocks the folders by putting plain files where
numba would create them; the second runs a read-only copy (``chmod -R a-w``, no writable home) as
uid 65534 through ``setpriv`` when the tests run as root, or as the current user otherwise. Both
check that numba found no cache folder (``numba_cache()`` is False), so a setup that still lets
the child write cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

import mmquant
from mmquant import kernels

pytest.importorskip("numba")

# Encodes with the format kernels (int) and the compander kernels and checks the bytes against the
# numpy reference; imports the lattice kernels (their decoration is what failed) without compiling.
SCRIPT = r"""
import os, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import numpy as np
    import mmquant as mq
    import mmquant.kernels.formats, mmquant.kernels.compander
    import mmquant.kernels.lattice_closest, mmquant.kernels.lattice_block
    import mmquant.kernels.lattice_groups
assert mq.__file__.startswith(sys.argv[1]), mq.__file__
x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
out = []
for backend in ("numba", "numpy"):
    os.environ["MMQUANT_KERNELS"] = backend
    for spec in ("int:bits=4", "compander"):
        q = mq.get(spec)
        e = q.encode(x)
        out.append(e.codes.tobytes() + q.decode(e).tobytes())
assert out[:2] == out[2:], "numba and numpy differ"
from mmquant.kernels import numba_cache
print("cache", numba_cache())
print("warnings", " | ".join(str(w.message) for w in caught if w.category is RuntimeWarning))
"""


def _copy_package(root: Path) -> Path:
    site = root / "site"
    src = Path(mmquant.__file__).parent
    shutil.copytree(src, site / "mmquant", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _run(site: Path, env: dict[str, str], prefix: tuple[str, ...] = ()) -> str:
    res = subprocess.run(
        [*prefix, sys.executable, "-c", SCRIPT, str(site)],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=600,
        cwd=str(site),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_kernels_compile_without_a_writable_cache(tmp_path):
    site = _copy_package(tmp_path)
    blocker = tmp_path / "blocker"  # a file where numba expects folders
    blocker.write_text("")
    (site / "mmquant" / "kernels" / "__pycache__").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "MMQUANT_", "XDG_"))}
    env.update(NUMBA_CACHE_DIR=str(blocker), XDG_CACHE_HOME=str(blocker), HOME=str(blocker))
    out = _run(site, env)
    assert "cache False" in out
    assert "numba cannot cache mmquant's kernels" in out and "NUMBA_CACHE_DIR" in out


def test_read_only_install_as_another_user():
    """chmod -R a-w on the copy; as root the child runs as uid/gid 65534 (nobody)."""
    as_root = os.geteuid() == 0
    setpriv = shutil.which("setpriv")
    if as_root and setpriv is None:
        pytest.skip("running as root without setpriv to drop to an unprivileged user")
    root = Path(tempfile.mkdtemp(prefix="mmquant-ro-"))
    try:
        site = _copy_package(root)
        for p in [root, *root.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "MMQUANT_", "XDG_"))
        }
        env["HOME"] = "/nonexistent" if as_root else str(root)
        if not as_root and os.access(root, os.W_OK):
            pytest.skip("this user can write into read-only folders")
        prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups") if as_root else ()
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import numpy, numba"],
            capture_output=True,
            env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
            cwd="/",
            timeout=300,
        )
        if probe.returncode != 0:  # e.g. a virtual environment inside a folder of mode 0700
            pytest.skip("the unprivileged user cannot import numpy/numba from this interpreter")
        out = _run(site, env, prefix)
        assert "cache False" in out and "numba cannot cache" in out
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755)
        shutil.rmtree(root)


def test_numba_cache_probe(monkeypatch):
    """True where the cache can be written; False, with a warning, when numba refuses to cache."""
    import numba

    kernels.numba_cache.cache_clear()
    try:
        assert kernels.numba_cache() is True  # the checkout is writable
        kernels.numba_cache.cache_clear()

        def refuse(*args, **kwargs):
            raise RuntimeError("cannot cache function: no locator available")

        monkeypatch.setattr(numba, "njit", refuse)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.numba_cache() is False
        assert any("no locator available" in str(w.message) for w in caught)
    finally:
        monkeypatch.undo()
        kernels.numba_cache.cache_clear()
