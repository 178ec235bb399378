"""The fused trellis decoder (symbols, row scale and inverse rotation per row): both backends give
the same bits, the same values as the unfused path, and refuse records of the wrong size."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mmquant as mq
from mmquant.core import Encoded
from mmquant.lattices.inverse import inverse_program
from mmquant.packing import unpack
from mmquant.rotations import rotation
from mmquant.trellis.quantizer import decode_rows, decode_symbols

kt = pytest.importorskip("mmquant.kernels.trellis")


def _unfused(q, enc: Encoded) -> np.ndarray:
    """The decode as it was before the fused kernel: float32 rows, float64 scale, rotation."""
    rows, S = q._steps(enc.shape)
    n = enc.shape[-1]
    u = unpack(enc.codes, q.kv, rows * S).reshape(rows, S)
    y = decode_symbols(u, q.table(), q.L, q.kv)[:, :n].astype(np.float64)
    y = y * enc.side["norm"].astype(np.float64)[:, None]
    if q.rotate:
        y = rotation(n, q.seed).inverse(y)
    return y.reshape(enc.shape)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("tcq:bits=2,L=8", (3, 64)),  # odd row count, power of two
        ("tcq:bits=3,L=9,V=2,code=strat", (5, 100)),  # block Hadamard (100 = 64 + 32 + 4)
        ("tcq:bits=2,L=10,V=2,code=3inst", (7, 9)),  # odd length, V = 2: half a step unused
        ("tcq:bits=4,L=9,code=lut", (2, 384)),  # 12·32: a Paley factor
        ("tcq:bits=1,L=8,rotate=false", (3, 37)),
        ("tcq:bits=5,L=9,seed=7", (1, 3, 28 * 16)),
        ("tcq:bits=2,L=8", (4, 1)),
        ("tcq:bits=3,L=8,code=strat", (17, 1000)),
    ],
)
def test_backends_bit_exact_and_equal_to_unfused(spec, shape, monkeypatch):
    x = np.random.default_rng(2).standard_normal(shape) * 5
    q = mq.get(spec)
    enc = q.encode(x)
    monkeypatch.setenv("MMQUANT_KERNELS", "numba")
    fast = q.decode(enc)
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    ref = q.decode(enc)
    assert fast.dtype == np.float64 and fast.shape == shape
    assert np.array_equal(fast, ref)
    old = _unfused(q, enc)
    n = shape[-1]
    if n & (n - 1) == 0:  # the same butterflies: the same bits
        assert np.array_equal(ref, old)
    else:  # numpy.einsum may order the sums over a Paley factor its own way
        np.testing.assert_allclose(ref, old, rtol=1e-12, atol=1e-12 * np.abs(old).max())


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_kernel_rows_split_between_threads(rows):
    """decode_full and the reference on random symbols, any row count."""
    L, kv, S, n = 10, 3, 48, 44
    rng = np.random.default_rng(rows)
    u = rng.integers(0, 1 << kv, rows * S).astype(np.uint8)
    from mmquant.packing import pack

    codes = pack(u, kv)
    table = mq.get(f"tcq:bits=3,L={L},code=strat").table()
    norm = rng.random(rows) * 3
    prog = inverse_program(n, 11)
    ref = decode_rows(codes, (rows, n), S, table, L, kv, norm, prog)
    assert np.array_equal(kt.decode_full(codes, (rows, n), S, table, L, kv, norm, prog), ref)
    ref0 = decode_rows(codes, (rows, n), S, table, L, kv, norm, None)
    assert np.array_equal(kt.decode_full(codes, (rows, n), S, table, L, kv, norm, None), ref0)


def test_kernel_refuses_short_buffers():
    L, kv, S, n, rows = 8, 2, 16, 16, 3
    table = mq.get("tcq:bits=2,L=8").table()
    codes = np.zeros(rows * S * kv // 8, np.uint8)
    norm = np.ones(rows)
    prog = inverse_program(n)
    kt.decode_full(codes, (rows, n), S, table, L, kv, norm, prog)
    with pytest.raises(ValueError, match="code bytes"):
        kt.decode_full(codes[:-1], (rows, n), S, table, L, kv, norm, prog)
    with pytest.raises(ValueError, match="row scales"):
        kt.decode_full(codes, (rows, n), S, table, L, kv, norm[:2], prog)
    with pytest.raises(ValueError, match="rotation of length"):
        kt.decode_full(codes, (rows, n), S, table, L, kv, norm, inverse_program(n + 1))
    with pytest.raises(ValueError, match="steps cannot hold"):
        kt.decode_full(codes, (rows, S + 1), S, table, L, kv, norm, None)
    with pytest.raises(ValueError, match="table"):
        kt.decode_full(codes, (rows, n), S, table[:, :100], L, kv, norm, None)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_corrupt_records_are_refused(backend, monkeypatch):
    monkeypatch.setenv("MMQUANT_KERNELS", backend)
    q = mq.get("tcq:bits=3,L=8")
    enc = q.encode(np.random.default_rng(0).standard_normal((3, 40)))
    short = Encoded(enc.codes[:-1], enc.side, enc.shape, enc.spec, enc.seed)
    with pytest.raises(ValueError):
        q.decode(short)
    bigger = Encoded(enc.codes, enc.side, (5, 40), enc.spec, enc.seed)
    with pytest.raises(ValueError):
        q.decode(bigger)
    neg = dict(enc.side, norm=-enc.side["norm"])
    with pytest.raises(ValueError, match="norm"):
        q.decode(Encoded(enc.codes, neg, enc.shape, enc.spec, enc.seed))
    few = dict(enc.side, norm=enc.side["norm"][:2])
    with pytest.raises(ValueError):
        q.decode(Encoded(enc.codes, few, enc.shape, enc.spec, enc.seed))
    assert math.isfinite(float(q.decode(enc).sum()))


@pytest.mark.parametrize(("L", "k", "margin"), [(10, 4, 0.08), (12, 1, 0.02)])
def test_trained_stratified_code_beats_stratified(L, k, margin):
    """tstrat's MSE gap below strat's by a margin at L ≤ 12 (fixed data, not the training data)."""
    x = np.random.default_rng(31).standard_normal((8, 4096))

    def mse(code: str) -> float:
        q = mq.get(f"tcq:bits={k},L={L},code={code}")
        return float(np.mean((x - q.decode(q.encode(x))) ** 2))

    assert 10 * math.log10(mse("strat") / mse("tstrat")) > margin


def test_trained_stratified_table():
    from mmquant.trellis.codes import code_table, strat_positions
    from mmquant.trellis.lut import strat_info, strat_knots

    t = code_table("tstrat", 10, 2, 3)
    assert t.shape == (2, 1024) and t.dtype == np.float32 and np.all(np.isfinite(t))
    assert abs(float(np.sqrt(np.mean(t.astype(np.float64) ** 2))) - 1) < 0.1
    assert strat_knots(3, 2).shape == (1 << strat_info()["Q"],)
    # the knots are a correction: zero knots give the stratified code
    from scipy.special import ndtri

    u = strat_positions(10, 2, 3)
    s = code_table("strat", 10, 2, 3).astype(np.float64)
    np.testing.assert_allclose(ndtri(u) / np.sqrt(np.mean(ndtri(u) ** 2)), s, rtol=1e-6)
    with pytest.raises(ValueError, match="trained"):
        strat_knots(6, 2)


def test_trained_stratified_matches_its_training_script():
    import importlib.util
    from pathlib import Path

    from mmquant.trellis.lut import strat_info, strat_knots

    path = Path(__file__).resolve().parents[2] / "tools" / "train_trellis_strat.py"
    spec = importlib.util.spec_from_file_location("train_trellis_strat", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    setup = {k: v for k, v in strat_info().items() if k != "configs"}
    assert setup == mod.SETUP
    assert np.array_equal(mod.train(1, 1), strat_knots(1, 1))
