"""The numba kernels equal the numpy reference bit for bit; the numpy path works without numba."""

import numpy as np
import pytest

import mmquant as mq
from mmquant.lattices.closest import closest_dn, closest_e8, lattice
from mmquant.lattices.voronoi import dither, voronoi_decode_blocks, voronoi_encode_blocks

pytest.importorskip("numba")
from mmquant.kernels.lattice import closest_kernel


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


@pytest.mark.parametrize("name", ["e8", "d4", "zn"])
@pytest.mark.parametrize("rule", ["least-error", "no-overload"])
@pytest.mark.parametrize("dithered", [False, True])
def test_voronoi_bit_exact(name, rule, dithered):
    lat = lattice(name)
    z = _inputs(1)
    u = dither(z.shape[0], lat, 9) if dithered else None
    betas = np.array([0.15, 0.25, 0.35, 0.6])
    a = voronoi_encode_blocks(z, lat, 7, betas, u, rule, backend="numpy")
    b = voronoi_encode_blocks(z, lat, 7, betas, u, rule, backend="numba")
    for x, y in zip(
        (a.digits, a.beta_index, a.estimate, a.overload),
        (b.digits, b.beta_index, b.estimate, b.overload),
    ):
        np.testing.assert_array_equal(x, y)
    da = voronoi_decode_blocks(a.digits, a.beta_index, lat, 7, betas, u, backend="numpy")
    db = voronoi_decode_blocks(a.digits, a.beta_index, lat, 7, betas, u, backend="numba")
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(da, a.estimate)


def test_quantizer_same_bytes_with_and_without_numba(monkeypatch):
    x = np.random.default_rng(2).standard_normal((16, 256))
    q = mq.get("e8:q=9,betas=3")
    e1 = q.encode(x)
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    e2 = q.encode(x)
    np.testing.assert_array_equal(e1.codes, e2.codes)
    np.testing.assert_array_equal(q.decode(e1), q.decode(e2))
