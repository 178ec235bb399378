"""The lattice encoders work a chunk of blocks at a time: the bytes do not depend on the chunks."""

import numpy as np
import pytest

import mmquant
from mmquant.lattices import chunks, indexpack
from mmquant.packing import pack


def _pack_base_q_whole(digits: np.ndarray, q: int) -> np.ndarray:
    """The one-pass packing: raw bits of all digits, then all base-m words."""
    a, m, j, w = indexpack._pack_params(q)
    d = np.asarray(digits, np.uint64).reshape(-1)
    out = []
    if a:
        out.append(pack(d & np.uint64((1 << a) - 1), a))
    if m > 1:
        out += indexpack._pack_words(d >> np.uint64(a), m, j, w)
    return np.concatenate(out)


@pytest.mark.parametrize("q", [2, 3, 7, 12, 14, 15, 16, 255, 256])
@pytest.mark.parametrize("n_blocks", [1, 2, 3, 1001, 20000])
def test_pack_base_q_in_steps_is_one_pass(monkeypatch, q, n_blocks):
    d = np.random.default_rng(q + n_blocks).integers(0, q, (n_blocks, 8))
    ref = _pack_base_q_whole(d, q)
    for step in (8, 24, 1 << 16):
        monkeypatch.setattr(indexpack, "PACK_CHUNK", step)
        np.testing.assert_array_equal(indexpack.pack_base_q(d, q), ref)
        np.testing.assert_array_equal(indexpack.pack_base_q(d.astype(np.uint8), q), ref)
    back, used = indexpack.unpack_base_q(ref, q, n_blocks)
    np.testing.assert_array_equal(back, d)
    assert used == ref.size


@pytest.mark.parametrize("n_blocks", [1, 16, 17, 100, 4097, 70001])
@pytest.mark.parametrize("size", [8, 64, 1024])
def test_pairwise_blocks_is_numpy_sum(n_blocks, size):
    """The walk reproduces numpy.sum bit for bit (if numpy changed its summation, this fails and
    the encoders' α would no longer be that of the whole-array sums)."""
    rng = np.random.default_rng(n_blocks)
    a = rng.standard_normal((n_blocks, 8)) * np.exp(3 * rng.standard_normal((n_blocks, 1)))
    b = rng.standard_normal((n_blocks, 8))
    got = chunks.pairwise_blocks(
        n_blocks, lambda b0, b1: (np.sum(a[b0:b1] * b[b0:b1]), np.sum(a[b0:b1])), size
    )
    assert got == (np.sum(a * b), np.sum(a))


SPECS = [
    "e8",
    "e8:group=8",
    "e8:dither=true,center=true",
    "e8:q=14;15;15;13",
    "e8:betas=2,rule=no-overload",
    "d4",
    "zn:q=8",
    "e8ec",
    "e8ec:dither=false,rate=2",
]


@pytest.mark.parametrize("spec", SPECS)
def test_encoding_does_not_depend_on_the_chunks(monkeypatch, spec):
    q = mmquant.get(spec)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((37, 96)) * rng.uniform(0.1, 3, (37, 1))).astype(np.float32)
    x[0, 3] = 40.0
    whole = q.encode(x)  # 37·96 entries: one chunk
    for size in (8, 64, 8 * 37):
        monkeypatch.setattr(chunks, "CHUNK_ENTRIES", size)
        monkeypatch.setattr(indexpack, "PACK_CHUNK", 16)
        part = q.encode(x)
        np.testing.assert_array_equal(part.codes, whole.codes)
        assert part.side.keys() == whole.side.keys()
        for k in whole.side:
            np.testing.assert_array_equal(part.side[k], whole.side[k])
        np.testing.assert_array_equal(q.decode(part), q.decode(whole))
        np.testing.assert_allclose(
            part.stats["mse_normalised"], whole.stats["mse_normalised"], rtol=1e-9
        )
