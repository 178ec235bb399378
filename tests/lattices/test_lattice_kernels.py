"""The numba kernels equal the numpy reference bit for bit; the numpy path works without numba."""

import numpy as np
import pytest

import mmquant as mq
from mmquant.lattices.blockcode import (
    dither,
    voronoi_decode_blocks,
    voronoi_encode_blocks,
    voronoi_encode_grouped,
)
from mmquant.lattices.closest import closest_dn, closest_e8, lattice

pytest.importorskip("numba")
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmquant.kernels.lattice_closest import _e8, closest_kernel


def _inputs(seed=0, n=20000):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8)) * 2.0
    z[: n // 4] = np.round(z[: n // 4] * 4) / 4  # many exact ties
    return z


@pytest.mark.parametrize("name", ["e8", "d4", "zn"])
def test_closest_bit_exact(name):
    z = _inputs()
    ref = {
        "e8": closest_e8(z),
        "d4": closest_dn(z.reshape(-1, 2, 4)).reshape(z.shape),
        "zn": np.floor(z + 0.5),
    }[name]
    np.testing.assert_array_equal(closest_kernel(z, name), ref)


def _adversarial_e8(seed=3, n=6000):
    """Rows full of ties: half-integers, quarters, all-equal entries, ±0, huge and non-finite."""
    rng = np.random.default_rng(seed)
    rows = []
    k = rng.integers(-6, 7, (n, 8)).astype(np.float64)
    rows.append(k + 0.5)  # exact half-integers (scalar ties in c0, exact points of c1)
    rows.append(k + rng.choice([0.0, 0.25, 0.5, 0.75], (n, 8)))  # quarter patterns
    rows.append(k + rng.choice([0.0, 0.5], (n, 8)))  # integers mixed with half-integers
    frac = rng.choice([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875], (n, 1))
    rows.append(np.repeat(rng.integers(-3, 4, (n, 1)) + frac, 8, axis=1))  # all equal
    rows.append(np.repeat(np.array([[0.25], [-0.25], [0.5], [-0.5], [0.75], [-0.75]]), 8, 1))
    rows.append(rng.choice([0.0, -0.0, 0.5, -0.5, 1.0, -1.0], (n, 8)))  # signed zeros
    big = rng.choice([1e6, -1e6, 2.0**52, -(2.0**52), 2.0**53, 1e15, 1e300], (n, 8))
    rows.append(big + rng.choice([0.0, 0.25, 0.5, 1.0, 1.5], (n, 8)))  # 1e6 + 0.5 etc.
    # sums beyond 2**53: numpy's pairwise float sum decides the parity
    rows.append(2.0**53 * rng.choice([0.0, 1.0, -1.0, 3.0], (n, 8)) + k)
    rows.append(np.full((4, 8), 1.7e308) + np.array([[0.0], [1.0], [-0.5], [0.5]]))  # overflow
    rows.append(rng.standard_normal((n, 8)) * 3)
    special = rng.standard_normal((n, 8)) * 2
    mask = rng.random((n, 8)) < 0.1
    special[mask] = rng.choice([np.nan, np.inf, -np.inf], mask.sum())
    rows.append(special)
    rows.append(rng.choice([5e-324, -5e-324, 1e-300, 0.5 - 2.0**-54, 0.5 + 2.0**-53], (n, 8)))
    return np.concatenate(rows)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint64)


def test_closest_e8_bit_exact_adversarial():
    z = _adversarial_e8()
    with np.errstate(invalid="ignore", over="ignore"):
        ref = closest_e8(z)
    np.testing.assert_array_equal(_bits(closest_kernel(z)), _bits(ref))


def test_closest_e8_per_block_bit_exact():
    """The per-block _e8 (used by the Voronoi encoder and decoder) equals the numpy path."""
    z = _adversarial_e8(4, 300)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = closest_e8(z)
    out = np.empty(8)
    t0 = np.empty(8)
    for row, r in zip(z, ref):
        _e8(row, out, t0)
        np.testing.assert_array_equal(_bits(out), _bits(r))


_tie_floats = st.one_of(
    st.integers(-64, 64).map(lambda i: i / 8),
    st.floats(-6, 6, width=64),
    st.sampled_from([0.0, -0.0, 1e6 + 0.5, -1e6 - 0.5, 2.0**53, np.nan, np.inf, -np.inf]),
)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 40).map(lambda r: (r, 8)), elements=_tie_floats))
def test_closest_e8_bit_exact_property(z):
    with np.errstate(invalid="ignore", over="ignore"):
        ref = closest_e8(z)
    np.testing.assert_array_equal(_bits(closest_kernel(z)), _bits(ref))


@pytest.mark.parametrize("name", ["e8", "d4", "zn"])
@pytest.mark.parametrize("rule", ["least-error", "no-overload"])
@pytest.mark.parametrize("dithered", [False, True])
@pytest.mark.parametrize("search", [True, False])
@pytest.mark.parametrize("q", [7, (7, 8, 6, 5)])
def test_voronoi_bit_exact(name, rule, dithered, search, q):
    lat = lattice(name)
    z = _inputs(1)
    u = dither(z.shape[0], lat, 9) if dithered else None
    betas = np.array([0.15, 0.25, 0.35, 0.6])
    a = voronoi_encode_blocks(z, lat, q, betas, u, rule, backend="numpy", search=search)
    b = voronoi_encode_blocks(z, lat, q, betas, u, rule, backend="numba", search=search)
    for x, y in zip(
        (a.digits, a.beta_index, a.estimate, a.overload, a.error),
        (b.digits, b.beta_index, b.estimate, b.overload, b.error),
    ):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a.error, np.sum((z - a.estimate) ** 2, axis=1), rtol=1e-12)
    da = voronoi_decode_blocks(a.digits, a.beta_index, lat, q, betas, u, backend="numpy")
    db = voronoi_decode_blocks(a.digits, a.beta_index, lat, q, betas, u, backend="numba")
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(da, a.estimate)


def test_quantizer_same_bytes_with_and_without_numba(monkeypatch):
    x = np.random.default_rng(2).standard_normal((16, 256))
    for spec in ("e8:q=9,betas=3", "e8:q=9;10;8,betas=0.3;0.4;0.6", "e8:q=9,group=16,fit=true"):
        q = mq.get(spec)
        monkeypatch.delenv("MMQUANT_KERNELS", raising=False)
        e1 = q.encode(x)
        monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
        e2 = q.encode(x)
        np.testing.assert_array_equal(e1.codes, e2.codes)
        np.testing.assert_array_equal(q.decode(e1), q.decode(e2))


def test_grouped_encoder_bit_exact():
    lat = lattice("e8")
    z = _inputs(2)
    betas = np.array([0.2, 0.3, 0.45])
    runs = [
        voronoi_encode_grouped(z, lat, 9, betas, None, (0, 1, 3), 16, 12, backend=be)
        for be in ("numpy", "numba")
    ]
    for f in ("digits", "beta_index", "estimate", "overload", "error"):
        np.testing.assert_array_equal(getattr(runs[0], f), getattr(runs[1], f))
