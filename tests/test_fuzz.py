"""Fuzzing every registered quantizer family (hypothesis).

For each family in ``mmquant.registry()`` the configurations tried are ``cls.variants()`` plus the
default construction ``cls()`` (when it can be built without arguments). Inputs: 1-3 dimensions,
last axis 1..130 (so most sizes are *not* multiples of any block size), dtypes float16/32/64 and
int8/32/64 (converted as documented in mmquant/validation.py), and magnitudes from 1e-30 to 1e30
(float16: 1e-4 to 1e4), subnormals, all zeros, constant rows, sparse rows and a single huge outlier.

Properties checked on every example:

* ``encode`` either succeeds or raises a *documented* ``ValueError``/``TypeError`` (one raised by a
  ``raise`` statement in mmquant, not by numpy deep inside); rejections are counted as hypothesis
  events (``--hypothesis-show-statistics`` lists them). *Benign* inputs -- normal, uniform, sparse,
  constant or zero data with magnitudes 1e-4..1e4, or integers with |x| <= 127 -- must never be
  rejected, whatever their shape (formats pad or handle partial blocks);
* ``decode(encode(x))`` has the input's shape, a float32/float64 dtype, only finite values, and
  satisfies the error bound ``max_l |x̂_rl − x_rl| ≤ C · max_l |x_rl|`` for every row ``r`` (rows
  are the last axis, ``x`` as converted by validation; so an all-zero row must decode to zeros). ``C = 1`` for every family except those in ``ERROR_BOUND``: it is the
  bound of any quantizer that rounds into a range containing 0 and clips (never worse than
  outputting zeros); it catches sign errors, overflow, wrong scales and wrap-around. When the
  record holds float16 side information (scales), ``16 · 2^-14 ≈ 1e-3`` is added: float16 has no
  relative precision below its smallest normal, and those formats document that tiny data needs
  ``scale_dtype=float32``;
* encoding twice gives identical bytes, and the record survives ``mmquant.save``/``load`` with a
  bit-identical decode.

NaN/Inf entries are rejected with ``ValueError``, bool/complex arrays with ``TypeError``.
Known failures found by the fuzzer are pinned as deterministic cases in ``KNOWN_FAILURES`` and
marked ``xfail(strict=True)`` so that they show up until fixed.
"""

from __future__ import annotations

import linecache
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

import mmquant as mq
from mmquant.weightonly.quantizers import WeightOnlyQuantizer

# Families whose error can exceed max|x| (e.g. lattice overload wrap-around), with their bound.
ERROR_BOUND: dict[str, float] = {}
DEFAULT_BOUND = 1.0
# Families that rotate a row and keep only part of it (time sharing below R*): their per-entry
# error is bounded by C times the row's l2 norm ||x_r||_2 instead of its max |x_rl|.
L2_BOUND_FAMILIES = {"timeshare"}
REL_SLACK = 1e-6  # float32 rounding of the reconstruction
# float16 side information (scales) has no relative precision below its smallest normal 2^-14;
# formats that store float16 scales document that tiny data loses accuracy, so an absolute slack
F16_FLOOR = 16 * 2.0**-14


def _configs(cls) -> list[mq.Quantizer]:
    out: list[mq.Quantizer] = []
    try:
        out.extend(cls.variants())
    except Exception:
        pass
    try:
        d = cls()
        if all(d != q for q in out):
            out.append(d)
    except Exception:
        pass
    return out


FAMILIES = {name: _configs(cls) for name, cls in mq.registry().items()}
NAMES = sorted(FAMILIES)
# Weight-only families quantize an (a, n) matrix for an input covariance, with per-column side
# information that needs enough rows to fit a rate; the random shapes and rates of the round-trip
# fuzz and the 1-D edge cases are not their inputs. Their round trips, edge cases and corrupt
# records are tested in tests/weightonly/test_registered.py and tests/test_adversarial.py.
WEIGHT_ONLY = {n for n, c in mq.registry().items() if issubclass(c, WeightOnlyQuantizer)}
ROUND_TRIP_NAMES = [f for f in NAMES if f not in WEIGHT_ONLY]


def _is_documented(exc: BaseException) -> bool:
    """True if ``exc`` is a ValueError/TypeError raised by a ``raise`` statement in mmquant."""
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return False
    last = tb[-1]
    lines = [
        linecache.getline(last.filename, i).strip() for i in range(last.lineno - 3, last.lineno + 1)
    ]
    return "mmquant" in Path(last.filename).parts and any(s.startswith("raise") for s in lines)


# ---------------------------------------------------------------------------------------------
# Input strategy
# ---------------------------------------------------------------------------------------------
EXP_RANGE = {"float16": (-4, 4), "float32": (-30, 30), "float64": (-30, 30)}
SUBNORMAL = {"float16": 1e-6, "float32": 1e-40, "float64": 1e-310}
KINDS = ("normal", "zeros", "outlier", "constant", "subnormal", "sparse", "uniform")
BENIGN_KINDS = ("normal", "zeros", "constant", "sparse", "uniform")


@st.composite
def inputs(draw) -> tuple[np.ndarray, str, bool]:
    ndim = draw(st.integers(1, 3))
    last = draw(st.one_of(st.integers(1, 20), st.integers(21, 130)))
    lead = draw(st.lists(st.integers(1, 4), min_size=ndim - 1, max_size=ndim - 1))
    shape = (*lead, last)
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int"]))
    if dtype == "int":
        dtype = draw(st.sampled_from(["int8", "int32", "int64"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        hi = {"int8": 127, "int32": 2**31 - 1, "int64": 2**40}[dtype]
        hi = draw(st.sampled_from([1, 3, 100, hi]))
        x = rng.integers(-hi, hi + 1, size=shape).astype(dtype)
        return x, f"{dtype} |x|<={hi}", hi <= 127
    kind = draw(st.sampled_from(KINDS))
    lo, hi = EXP_RANGE[dtype]
    e = draw(st.integers(lo, hi))
    scale = 10.0**e
    z = rng.standard_normal(shape)
    if kind == "normal":
        x = z * scale
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape) * scale
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "constant":
        x = np.full(shape, draw(st.sampled_from([-1.0, 1.0])) * scale)
    elif kind == "subnormal":
        x = z * SUBNORMAL[dtype]
    elif kind == "sparse":
        x = z * scale * (rng.random(shape) < 0.1)
    else:  # one huge outlier
        x = z * scale
        boost = 10.0 ** draw(st.integers(2, 12 if dtype != "float16" else 3))
        idx = tuple(int(rng.integers(s)) for s in shape)
        x[idx] = np.sign(x[idx] or 1.0) * scale * boost
        x = np.clip(x, -0.9 * np.finfo(dtype).max, 0.9 * np.finfo(dtype).max)
    with np.errstate(over="ignore", under="ignore"):
        x = x.astype(dtype)
    assume(np.isfinite(x).all())
    return x, f"{dtype} {kind} 1e{e}", kind in BENIGN_KINDS and abs(e) <= 4


def _reference(x: np.ndarray) -> np.ndarray:
    return mq.validation.as_real_array(x).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
def check_round_trip(q: mq.Quantizer, x: np.ndarray, family: str, benign: bool = False) -> str:
    """All the properties of one example; returns "ok" or "rejected: <message>".

    ``benign`` inputs (ordinary magnitudes, no outlier or subnormal) must never be rejected.
    """
    try:
        enc = q.encode(x)
    except Exception as exc:
        if _is_documented(exc) and not benign:
            return f"rejected: {type(exc).__name__}: {str(exc)[:70]}"
        raise
    out = q.decode(enc)
    assert out.shape == x.shape, f"decoded shape {out.shape} != input shape {x.shape}"
    assert out.dtype in (np.float32, np.float64), out.dtype
    assert np.isfinite(out).all(), f"{int((~np.isfinite(out)).sum())} non-finite decoded values"
    ref = _reference(x)
    n = x.shape[-1]
    rows = ref.reshape(-1, n)
    row_max = np.abs(rows).max(axis=1)
    if family in L2_BOUND_FAMILIES:  # rotation-based: an entry's error is bounded by the row norm
        scale = np.where(row_max > 0, row_max, 1.0)  # (no underflow for subnormal rows)
        row_max = scale * np.sqrt(((rows / scale[:, None]) ** 2).sum(axis=1))
    row_err = np.abs(out.astype(np.float64).reshape(-1, n) - rows).max(axis=1)
    c = ERROR_BOUND.get(family, DEFAULT_BOUND)
    floor = F16_FLOOR if any(a.dtype == np.float16 for a in enc.side.values()) else 0.0
    bound = c * row_max * (1 + REL_SLACK) + floor
    bad = np.flatnonzero(row_err > bound)
    assert bad.size == 0, (
        f"row {bad[0]}: max error {row_err[bad[0]]:.3e} > {c} * max|row| + {floor:.2g} "
        f"= {bound[bad[0]]:.3e} ({bad.size} of {rows.shape[0]} rows)"
    )
    enc2 = q.encode(x)
    assert enc2.codes.tobytes() == enc.codes.tobytes(), "encoding is not deterministic"
    assert {k: v.tobytes() for k, v in enc2.side.items()} == {
        k: v.tobytes() for k, v in enc.side.items()
    }, "side information is not deterministic"
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f.mmq")
        mq.save(p, enc)
        back = mq.load_one(p, verify=False)
    assert q.decode(back).tobytes() == out.tobytes(), "decode after save/load differs"
    return "ok"


@pytest.mark.parametrize("family", NAMES)
def test_family_builds(family):
    """Each family has at least one configuration and encodes a plain Gaussian matrix."""
    configs = FAMILIES[family]
    assert configs, f"{family}: variants() is empty and the default construction fails"
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    for q in configs:
        assert mq.get(q.spec) == q, f"spec {q.spec!r} does not round-trip"
        out = q.decode(q.encode(x))
        assert out.shape == x.shape and np.isfinite(out).all()


# families whose fuzz run must not execute (crash the machine); the lead must see these
FUZZ_BROKEN: dict[str, str] = {}


def _fuzz_params():
    for f in ROUND_TRIP_NAMES:
        marks = [pytest.mark.skip(reason=FUZZ_BROKEN[f])] if f in FUZZ_BROKEN else []
        yield pytest.param(f, marks=marks, id=f)


@pytest.mark.parametrize("family", list(_fuzz_params()))
@given(data=st.data())
def test_fuzz_round_trip(family, data):
    configs = FAMILIES[family]
    assume(configs)
    q = data.draw(st.sampled_from(configs), label="quantizer")
    x, label, benign = data.draw(inputs(), label="x")
    event(f"input: {' '.join(label.split()[:2])}")
    result = check_round_trip(q, x, family, benign)
    event(result if result == "ok" else result[:60])


@pytest.mark.parametrize("family", NAMES)
@given(data=st.data())
def test_fuzz_rejects_bad_input(family, data):
    configs = FAMILIES[family]
    assume(configs)
    q = data.draw(st.sampled_from(configs), label="quantizer")
    n = data.draw(st.integers(1, 40))
    x = np.random.default_rng(n).standard_normal((2, n))
    i, j = data.draw(st.integers(0, 1)), data.draw(st.integers(0, n - 1))
    x[i, j] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with pytest.raises(ValueError, match="non-finite"):
        q.encode(x)
    for bad in (np.ones((2, n), dtype=bool), np.ones((2, n), dtype=np.complex64)):
        with pytest.raises(TypeError, match="dtype"):
            q.encode(bad)


# ---------------------------------------------------------------------------------------------
# Deterministic edge cases (and the place to pin what the fuzzer found)
# ---------------------------------------------------------------------------------------------
def _edge_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    g = rng.standard_normal((3, 37))
    outlier = g.copy()
    outlier[1, 5] = 1e30
    return {
        "zeros": np.zeros((3, 37)),
        "zero_row": np.array([[1e-6] + [0.0] * 7, [0.0] * 8]),  # a zero row beside a tiny one
        "huge_f64": g * 1e30,
        "tiny_f64": g * 1e-30,
        "huge_f32": (g * 1e30).astype(np.float32),
        "tiny_f32": (g * 1e-30).astype(np.float32),
        "subnormal_f64": g * 1e-310,
        "subnormal_f32": (g * 1e-40).astype(np.float32),
        "outlier_1e30": outlier,
        "f16_max": np.full((2, 9), 65504.0, dtype=np.float16),
        "single_entry": np.array([3.0]),
        "beyond_f32": np.array([1e39]),  # float64 data outside the float32 range
        "int64_big": rng.integers(-(2**40), 2**40, size=(2, 11)),
    }


EDGE_CASES = _edge_cases()
# (family, case) -> reason; filled from fuzzing results (see the module docstring)
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _edge_params():
    for family in ROUND_TRIP_NAMES:
        for case in EDGE_CASES:
            marks = []
            if (family, case) in KNOWN_FAILURES:
                marks = [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[family, case])]
            yield pytest.param(family, case, marks=marks, id=f"{family}-{case}")


@pytest.mark.parametrize(("family", "case"), list(_edge_params()))
def test_edge_cases(family, case):
    configs = FAMILIES[family]
    if not configs:
        pytest.skip("no configuration")
    for q in configs:
        check_round_trip(q, EDGE_CASES[case], family)


# ---------------------------------------------------------------------------------------------
# Determinism across runs and across numba / numpy paths
# ---------------------------------------------------------------------------------------------
def _file_bytes(q: mq.Quantizer, x: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f.mmq")
        mq.save(p, q.encode(x))
        return Path(p).read_bytes()


@pytest.mark.parametrize("family", NAMES)
def test_same_file_on_numpy_path(family, monkeypatch):
    """Same input/spec/seed: byte-identical files, with and without the numba kernels.

    The numpy path is forced with ``MMQUANT_KERNELS=numpy`` (read by the lattice code) and by
    making every ``mmquant.kernels.*`` module unimportable (formats fall back to numpy then).
    """
    configs = FAMILIES[family]
    if not configs:
        pytest.skip("no configuration")
    x = np.random.default_rng(3).standard_normal((16, 200)).astype(np.float32)
    default = [_file_bytes(q, x) for q in configs]
    assert default == [_file_bytes(q, x) for q in configs], "two runs differ"
    import mmquant.kernels as kernels_pkg

    kernel_mods = [m for m in list(sys.modules) if m.startswith("mmquant.kernels.")]
    kernel_mods += [
        f"mmquant.kernels.{p.stem}"
        for p in Path(kernels_pkg.__file__).parent.glob("*.py")
        if p.stem != "__init__"
    ]
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    for m in set(kernel_mods):
        monkeypatch.setitem(sys.modules, m, None)
    for q, ref in zip(configs, default):
        assert _file_bytes(q, x) == ref, f"{q.spec}: numpy path gives a different file"
