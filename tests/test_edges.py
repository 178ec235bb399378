"""Numbers at the edges: every family, near the float32/float16 limits, on both backends.

For every registered family (its default spec) and every probe below, ``encode`` either raises a
``ValueError`` whose message names the limiting dtype or range, or the decoded array is finite and
each row ``r`` satisfies the family's stated error::

    ‖x̂_r − x_r‖ ≤ C · ε_family · ‖x_r‖ + floor_family · √n

where ``ε_family`` is the family's largest per-row relative error on Gaussian data of the same
shape (measured here), ``C = 2.5``, and ``floor_family`` is the absolute resolution the family
documents: float32's own (``4·2^−149`` per entry: every family decodes to float32 or to a float32
norm times float64), for MX the E8M0 floor (``2^−127`` times half the element's smallest step,
:mod:`mmquant.formats.block`), for NVFP4 its per-tensor floor (``2^−7·s_t``, with the tensor scale
``s_t = max|x|/2688``). Some probes must *work* (no ``ValueError``): all zeros, float16 data at
±65504, and, for the MX, NVFP4 and lattice families, float32 data at ±3.4e38.

Both backends are run (numba kernels, and the numpy reference forced with
``MMQUANT_KERNELS=numpy`` and the kernel modules made unimportable): they must agree on the
refusal message, or decode bit for bit the same array.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import mmquant as mq
from mmquant.lattices.entropy_coded import RateNotMetWarning
from mmquant.weightonly.quantizers import WeightOnlyQuantizer

# The weight-only families (every WeightOnlyQuantizer: rtn, gptq, watersic, e8sic, tcqsic) are left
# out: their records hold per-column side information (6.5 bits/weight on 4 rows at their default rate of 4) and quantize a matrix for an
# input covariance, not rows near the float limits of product formats; their edge cases are in
# tests/weightonly/test_registered.py.
WEIGHT_ONLY = {n for n, c in mq.registry().items() if issubclass(c, WeightOnlyQuantizer)}
NAMES = [n for n in mq.available() if n not in WEIGHT_ONLY]
ROWS, N = 4, 64
C = 2.5
F32_MAX = float(np.finfo(np.float32).max)
ABS_F32 = 4 * 2.0**-149
MX_FLOOR = {  # 2^-127 × half the smallest step of the element (its subnormal quantum / 2)
    "mxfp4": 2.0**-127 * 0.25,  # E2M1: step 0.5
    "mxfp6": 2.0**-127 * 2.0**-4,  # E2M3: step 1/8
    "mxfp8": 2.0**-127 * 2.0**-10,  # E4M3: step 2^-9
    "mxint8": 2.0**-127 * 2.0**-7,  # INT8: step 1/64
}
#: (family prefix or name, probe) pairs that must encode (no ValueError)
MUST_WORK_ALL = {"zeros", "f16_max"}
MUST_WORK_F32MAX = {"mxfp4", "mxfp6", "mxfp8", "mxint8", "nvfp4", "d4", "e8", "e8ec", "zn"}
MESSAGE = re.compile(r"float16|float32|2\^128")


def _gauss(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, N))


def _near(limit: float, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = np.sign(rng.standard_normal((ROWS, N))) * limit * rng.uniform(0.5, 1.0, (ROWS, N))
    x[:, 0] = limit
    x[:, 1] = -limit
    return x.astype(dtype)


def _mixed(dtype: type) -> np.ndarray:
    mags = np.array([[1e-30], [1.0], [1e30], [1e-38]])
    with np.errstate(under="ignore"):
        return (_gauss() * mags).astype(dtype)


def _one_huge(value: float, dtype: type) -> np.ndarray:
    x = _gauss().astype(dtype)
    x[1, 5] = value
    return x


def _scaled(scale: float, dtype: type) -> np.ndarray:
    with np.errstate(under="ignore"):
        return (_gauss() * scale).astype(dtype)


PROBES = {
    "zeros": lambda: np.zeros((ROWS, N), np.float32),
    "one_huge_f32": lambda: _one_huge(3e38, np.float32),
    "one_huge_f64": lambda: _one_huge(1e30, np.float64),
    "f32_max": lambda: _near(F32_MAX, np.float32),
    "f32_max_f64": lambda: _near(F32_MAX, np.float64),
    "beyond_f32_f64": lambda: _scaled(1e39, np.float64),
    "f16_max": lambda: _near(65504.0, np.float16),
    "tiny_1e-30": lambda: _scaled(1e-30, np.float32),
    "tiny_1e-38": lambda: _scaled(1e-38, np.float32),
    "subnormal_1e-42": lambda: _scaled(1e-42, np.float32),
    "tiny_1e-300_f64": lambda: _scaled(1e-300, np.float64),
    "tiny_1e-8": lambda: _scaled(1e-8, np.float32),
    "mixed_f32": lambda: _mixed(np.float32),
    "mixed_f64": lambda: _mixed(np.float64),
}


def _row_errors(x: np.ndarray, xh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: ‖x̂ − x‖, ‖x‖ (both without under/overflow) and max|x|."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    xh = np.asarray(xh, np.float64).reshape(x.shape)
    m = np.abs(x).max(axis=1)
    s = np.where(m > 0, m, 1.0)
    err = np.linalg.norm((xh - x) / s[:, None], axis=1) * s
    norm = np.linalg.norm(x / s[:, None], axis=1) * s
    return err, norm, m


_BASE: dict[str, float] = {}


def _base_error(name: str) -> float:
    """The family's largest per-row relative error on Gaussian data of the probes' row length."""
    if name not in _BASE:
        q = mq.get(name)
        x = _gauss(32, seed=9)
        err, norm, _ = _row_errors(x, q.quantize(x))
        _BASE[name] = float((err / norm).max())
    return _BASE[name]


def _floor(name: str, x: np.ndarray) -> float:
    floor = ABS_F32
    if name in MX_FLOOR:
        floor = max(floor, MX_FLOOR[name])
    if name == "nvfp4":
        amax = float(np.abs(np.asarray(x, np.float64)).max())
        floor = max(floor, 2.0**-7 * amax / 2688)
    return floor


def _run(q: mq.Quantizer, x: np.ndarray) -> tuple[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RateNotMetWarning)  # tested in lattices/test_entropy*
        try:
            enc = q.encode(x)
        except ValueError as exc:
            return "refused", str(exc)
        return "decoded", q.decode(enc)


def _numpy_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmquant.kernels as kernels_pkg

    mods = {m for m in sys.modules if m.startswith("mmquant.kernels.")}
    mods |= {
        f"mmquant.kernels.{p.stem}"
        for p in Path(kernels_pkg.__file__).parent.glob("*.py")
        if p.stem != "__init__"
    }
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    for m in mods:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("probe", list(PROBES))
@pytest.mark.parametrize("name", NAMES)
def test_edge_probe(name, probe, monkeypatch):
    q = mq.get(name)
    x = PROBES[probe]()
    base = _base_error(name)
    outcome, value = _run(q, x)
    with monkeypatch.context() as m:
        _numpy_backend(m)
        outcome_np, value_np = _run(q, x)
    assert outcome == outcome_np, (outcome, value, outcome_np, value_np)
    if outcome == "refused":
        assert value == value_np, "the backends refuse with different messages"
        assert MESSAGE.search(str(value)), f"the message does not name the limit: {value}"
        assert re.search(r"\d", str(value)), f"the message names no number: {value}"
        must = probe in MUST_WORK_ALL or (probe == "f32_max" and name in MUST_WORK_F32MAX)
        assert not must, f"{name} must encode {probe}: {value}"
        return
    xh = np.asarray(value)
    assert np.asarray(value_np).tobytes() == xh.tobytes(), "the backends decode differently"
    assert xh.shape == x.shape and np.isfinite(xh).all()
    err, norm, _ = _row_errors(mq.validation.as_real_array(x), xh)
    bound = C * base * norm + _floor(name, x) * np.sqrt(N)
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, (
        f"{name} on {probe}: row {bad[0]} error {err[bad[0]]:.3g} > {bound[bad[0]]:.3g} "
        f"(relative {err[bad[0]] / max(norm[bad[0]], 1e-300):.3g}, family {base:.3g})"
    )


def test_every_float32_encodes_in_mx_and_nvfp4():
    """The MX and NVFP4 formats take any float32, up to ±3.4028235e38, within their error."""
    x = _near(F32_MAX, np.float32)
    for name in ("mxfp4", "mxfp6", "mxfp8", "mxint8", "nvfp4"):
        q = mq.get(name)
        xh = q.quantize(x)
        assert np.isfinite(xh).all()
        err, norm, _ = _row_errors(x, xh)
        assert np.all(err <= C * _base_error(name) * norm)


@pytest.mark.parametrize(
    "spec",
    [
        "int:scale_dtype=float32",
        "int:bits=8,scale_dtype=float32",
        "int:bits=2,affine=true,scale_dtype=float32",
        "int:group=-1,scale_dtype=float32",
        "fp:scale_dtype=float32",
        "fp:fmt=e2m1,scale_dtype=float32",
        "nf4:scale_dtype=float32",
    ],
)
def test_float32_scales_at_the_float32_maximum(spec):
    """float32 scales: decoded values stay finite at ±3.4e38 (the scale is lowered by an ulp)."""
    q = mq.get(spec)
    x = _near(F32_MAX, np.float32)
    if "affine" in spec:  # a range max − min beyond float32 cannot be decoded as s·c
        with pytest.raises(ValueError, match="affine=false"):
            q.encode(x)
        x = np.abs(x)
    xh = q.quantize(x)
    assert np.isfinite(xh).all()
    err, norm, _ = _row_errors(x, xh)
    assert np.all(err <= 0.5 * norm)
    with pytest.raises(ValueError, match="float32 range"):  # float64 beyond float32
        q.encode(_near(F32_MAX, np.float64) * 3)


@pytest.mark.parametrize("name", ["int", "fp", "nf4", "compander", "lloydmax", "uniform"])
def test_tiny_rows_refused_with_float16_and_held_with_float32(name):
    """Rows too small for float16 scales raise a clear error; float32 scales hold them."""
    x = _scaled(1e-30, np.float32)
    with pytest.raises(ValueError, match=r"row 0 \(max\|x\| = .*too small for float16.*float32"):
        mq.get(name).encode(x)
    q32 = mq.get(name, scale_dtype="float32")
    err, norm, _ = _row_errors(x, q32.quantize(x))
    assert np.all(err <= C * _base_error(name) * norm)


@pytest.mark.parametrize("name", ["int", "fp", "nf4", "compander"])
def test_tiny_group_in_a_normal_row_is_accepted(name):
    """Only rows matter: a negligible group beside normal ones does not refuse the tensor."""
    x = _gauss()
    x[2, :32] *= 1e-12
    q = mq.get(name)
    err, norm, _ = _row_errors(x, q.quantize(x))
    assert np.all(err <= C * _base_error(name) * norm)


def test_float16_scale_check_leaves_ordinary_encodings_alone():
    """Data whose scales are all above the float16 floor take no second pass and no new bytes."""
    x = _gauss(64, seed=3).astype(np.float32) * 1e-3
    for name in ("int", "fp", "nf4", "compander", "lloydmax"):
        a = mq.get(name).encode(x)
        b = mq.get(name).encode(x.copy())
        assert a.codes.tobytes() == b.codes.tobytes()
