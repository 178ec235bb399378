"""The numba kernels of the formats are bit-exact with the numpy reference."""

import numpy as np
import pytest

import mmquant as mq
from mmquant.packing import pack, unpack

pytest.importorskip("numba")
from mmquant.kernels import formats as kf

SPECS = [
    "int",
    "int:bits=2,group=7",
    "int:bits=8,group=0",
    "int:bits=3,group=-1",
    "int:bits=5,affine=true",
    "int:bits=4,scale_dtype=float32",
    "fp:fmt=e2m1",
    "fp:fmt=e2m3,group=16",
    "fp:fmt=e3m2,group=0",
    "fp:fmt=e4m3,group=-1",
    "fp:fmt=e5m2,scale_dtype=float32",
    "mxfp4",
    "mxfp6",
    "mxfp6:elem=e3m2",
    "mxfp8",
    "mxfp8:elem=e5m2",
    "mxint8",
    "nvfp4",
    "nf4",
    "nf4:group=0,scale_dtype=float32",
]


def _data():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((7, 77))
    heavy = rng.standard_t(2, (5, 96)) * (rng.random((5, 96)) < 0.7)
    ties = np.tile(np.arange(-40, 41) / 4, (3, 1))  # many exact midpoints of the grids
    return {
        "normal_f32": g.astype(np.float32),
        "normal_f64": g,
        "heavy_f32": heavy.astype(np.float32),
        "ties_f32": ties.astype(np.float32),
        "ties_f64": ties,
        "tiny_f32": (g * 1e-39).astype(np.float32),
        "zeros": np.zeros((2, 40), np.float32),
        "3d": rng.standard_normal((2, 3, 50)).astype(np.float32),
    }


def _both(q, x, monkeypatch):
    enc_k = q.encode(x)
    dec_k = q.decode(enc_k)
    with monkeypatch.context() as m:
        m.setenv("MMQUANT_KERNELS", "numpy")
        enc_n = q.encode(x)
        dec_n = q.decode(enc_n)
        dec_cross = q.decode(enc_k)
    return enc_k, dec_k, enc_n, dec_n, dec_cross


@pytest.mark.parametrize("spec", SPECS)
def test_kernels_bit_exact(spec, monkeypatch):
    q = mq.get(spec)
    for name, x in _data().items():
        try:
            enc_k, dec_k, enc_n, dec_n, dec_cross = _both(q, x, monkeypatch)
        except ValueError as exc:  # refused (rows too small for float16 scales): on both paths
            assert "float16" in str(exc) and name == "tiny_f32", (name, exc)
            with monkeypatch.context() as m:
                m.setenv("MMQUANT_KERNELS", "numpy")
                with pytest.raises(ValueError) as again:
                    q.encode(x)
            assert str(again.value) == str(exc)
            continue
        assert enc_k.codes.tobytes() == enc_n.codes.tobytes(), name
        assert enc_k.side.keys() == enc_n.side.keys()
        for key in enc_k.side:
            assert enc_k.side[key].dtype == enc_n.side[key].dtype
            assert enc_k.side[key].tobytes() == enc_n.side[key].tobytes(), (name, key)
        assert dec_k.dtype == dec_n.dtype == np.float32
        assert dec_k.tobytes() == dec_n.tobytes(), name
        assert dec_cross.tobytes() == dec_n.tobytes(), name


@pytest.mark.parametrize("width", range(1, 9))
def test_pack_unpack_match_packing(width):
    rng = np.random.default_rng(width)
    for n in (1, 7, 8, 9, 1000):
        c = rng.integers(0, 2**width, n).astype(np.uint8)
        p = kf.pack(c, width)
        assert p.tobytes() == pack(c, width).tobytes()
        assert np.array_equal(kf.unpack(p, width, n), unpack(p, width, n))


def test_fp_kernel_all_codes_and_midpoints():
    from mmquant.formats.minifloat import FORMATS, encode_elements, value_table

    for f in FORMATS.values():
        v = np.unique(value_table(f)[np.isfinite(value_table(f))]).astype(np.float64)
        x = np.concatenate([v, (v[:-1] + v[1:]) / 2, [f.max_normal * 3, -1e30, -0.0]])
        x = x.astype(np.float32).reshape(1, -1)
        d = np.ones((1, 1), np.float32)
        got = kf.encode_fp(x, x.shape[1], d, False, f.emin, f.mbits, f.max_code, f.bits)
        assert np.array_equal(got, encode_elements(x, f).ravel())
    with pytest.raises(TypeError, match="float32"):
        kf.encode_fp(np.zeros((1, 4)), 4, np.ones((1, 1)), False, 0, 1, 7, 4)
