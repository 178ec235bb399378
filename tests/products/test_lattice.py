"""Products from the nested-lattice codes: the tiled integer codewords, the kernel and the numpy
reference bit-exact, equal to decode-then-multiply, hostile tiles refused."""

from __future__ import annotations

import numpy as np
import pytest

import mmquant as mq
from mmquant.products import times
from mmquant.products.lattice import TILE, lattice_tiles, reference_dot
from mmquant.products.records import lattice_view

SPECS = [
    "e8",
    "e8:group=32",
    "e8:q=200,betas=0.01;0.02",  # coordinates beyond int8: int16 tiles
    "e8:q=9;10;8,betas=0.3;0.4;0.6",  # union code (given scales: no design to compute)
    "e8:rule=no-overload,betas=0.3;0.6",
    "d4:group=32",
    "d4:center=true",
    "zn",
    "zn:group=32,rotate=false",
]
EPS32 = float(np.finfo(np.float32).eps)


def _record(spec: str, shape: tuple[int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    q = mq.get(spec)
    return q, q.encode(w)


@pytest.mark.parametrize("spec", SPECS)
def test_equal_to_decode_and_backends_bit_exact(spec):
    q, enc = _record(spec, (67, 83))
    w_hat = q.decode(enc).astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((83, 3)).astype(np.float32)
    a = times(enc, x, backend="numpy")
    b = times(enc, x, backend="numba")
    assert a.tobytes() == b.tobytes(), spec
    # one activation (the kernel's direct path) gives the batch's column bit for bit
    for t in range(3):
        one = times(enc, x[:, t], backend="numba")
        assert one.tobytes() == b[:, t].tobytes(), spec
        assert one.tobytes() == times(enc, x[:, t], backend="numpy").tobytes(), spec
    ref = w_hat @ x.astype(np.float64)
    # float32 rounding of the rotated activations and of the eight-term block sums
    xn = np.linalg.norm(x.astype(np.float64), axis=0)
    bound = 16 * EPS32 * np.linalg.norm(w_hat, axis=1)[:, None] * xn[None, :]
    assert np.all(np.abs(a - ref) <= bound + 1e-30), spec


def test_large_batches_go_in_parts(monkeypatch):
    from mmquant.products import lattice

    _, enc = _record("e8:group=32", (20, 24))
    x = np.random.default_rng(4).standard_normal((24, 7)).astype(np.float32)
    whole = times(enc, x, backend="numba")
    monkeypatch.setattr(lattice, "BATCH", 3)
    assert times(enc, x, backend="numba").tobytes() == whole.tobytes()
    assert times(enc, x, backend="numpy").tobytes() == whole.tobytes()


def test_tiles_hold_the_codewords():
    _, enc = _record(
        "e8:q=200,betas=0.01;0.02", (70, 19)
    )  # two tiles, the second partly past the end
    view = lattice_view(enc)
    lt = lattice_tiles(view)
    n8 = 24
    assert lt.codes.dtype == np.int16 and lt.codes.shape == (2, n8, TILE)
    assert lt.bscale.dtype == np.float32 and lt.bscale.shape == (2, n8 // 8, TILE)
    c, bi = view.points(0, 70)
    untiled = lt.codes.transpose(0, 2, 1).reshape(2 * TILE, n8)
    assert np.array_equal(untiled[:70], c) and not np.any(untiled[70:])
    scales = (view.betas * 0.5).astype(np.float32)
    bs = lt.bscale.transpose(0, 2, 1).reshape(2 * TILE, n8 // 8)
    assert np.array_equal(bs[:70], scales[bi]) and not np.any(bs[70:])
    # the codewords are those of the decoder: β(y)·norm·α rotated back is the decoded row
    zh = view.blocks(0, 70)
    assert np.array_equal(zh, view.betas[bi].repeat(8, axis=1) * c * 0.5)
    _, enc_d4 = _record("d4", (3, 16))
    lt4 = lattice_tiles(lattice_view(enc_d4))
    assert lt4.codes.dtype == np.int8 and lt4.codes.shape == (1, 16, TILE)


def test_reference_reads_every_chunk(monkeypatch):
    from mmquant.products import lattice

    _, enc = _record("e8:group=32", (45, 40))
    view = lattice_view(enc)
    v = np.random.default_rng(2).standard_normal((2, 40)).astype(np.float32)
    whole = reference_dot(view, v)
    monkeypatch.setattr(lattice, "CHUNK", 7 * 40)  # 7 rows per step
    assert reference_dot(view, v).tobytes() == whole.tobytes()
    assert lattice_tiles(view).codes.tobytes() == lattice.lattice_tiles(view).codes.tobytes()


def test_kernel_refuses_tiles_that_do_not_fit():
    from mmquant.kernels.lattice_products import lattice_product

    codes = np.zeros((1, 16, TILE), np.int8)
    bs = np.zeros((1, 2, TILE), np.float32)
    v = np.zeros((1, 16), np.float32)
    assert lattice_product(codes, bs, v, 5).shape == (5, 1)
    bad = [
        (codes.astype(np.float32), bs, v, 5),  # not integer codewords
        (codes[0], bs, v, 5),  # not 3-D
        (codes, bs[:, :1], v, 5),  # block scales short
        (codes, bs, v[:, :8], 5),  # activations short
        (codes, bs, v, TILE + 1),  # more rows than the tiles hold
        (np.zeros((1, 12, TILE), np.int8), np.zeros((1, 1, TILE), np.float32), v, 5),
    ]
    for args in bad:
        with pytest.raises(ValueError):
            lattice_product(*args)


def test_hostile_lattice_views_are_refused():
    import dataclasses

    q, enc = _record("e8:betas=0.3;0.6", (9, 16))
    view = lattice_view(enc)

    def wrong_index(r0, r1):
        c, bi = view.points(r0, r1)
        return c, bi + q.k  # a β index past the list

    def wide(r0, r1):
        c, bi = view.points(r0, r1)
        return c * 100_000 + 40_000, bi  # a coordinate far outside the Voronoi cell

    for points in (wrong_index, wide):
        bad = dataclasses.replace(view, points=points)
        with pytest.raises(ValueError, match="corrupt codes"):
            lattice_tiles(bad)
        with pytest.raises(ValueError, match="corrupt codes"):
            reference_dot(bad, np.zeros((1, 16), np.float32))
    bad = dataclasses.replace(view, betas=np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="β list"):
        lattice_tiles(bad)
    dith = mq.get("e8:dither=true,betas=0.3;0.5").encode(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="dithered"):
        lattice_tiles(lattice_view(dith))


def test_compiled_walsh_hadamard_is_the_rotations_own():
    from mmquant.kernels.lattice_products import fwht_rows
    from mmquant.products.lattice import _rotate
    from mmquant.rotations import fwht, rotation

    rng = np.random.default_rng(3)
    for n in (1, 2, 8, 64, 512):
        x = rng.standard_normal((3, n))
        y = x.copy()
        fwht_rows(y)
        assert y.tobytes() == fwht(x).tobytes()
    for n in (256, 384, 100):  # power of two (compiled), 12·32 and block Hadamard (numpy)
        _, enc = _record("zn", (2, n))
        view = lattice_view(enc)
        x = rng.standard_normal((2, n))
        want = rotation(n, 0).apply(x)
        assert _rotate(view, x, None).tobytes() == want.tobytes()
        from mmquant.kernels import lattice_products

        assert _rotate(view, x, lattice_products).tobytes() == want.tobytes()
    with pytest.raises(ValueError):
        fwht_rows(np.zeros((1, 12)))
    with pytest.raises(ValueError):
        fwht_rows(np.zeros((1, 8), np.float32))
