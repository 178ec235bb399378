import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.packing import pack, pack_wide, packed_nbytes, unpack, unpack_wide


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 16), st.integers(0, 200), st.integers(0, 2**32 - 1))
def test_round_trip(width, n, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << width, n)
    data = pack(codes, width)
    assert data.dtype == np.uint8 and data.size == packed_nbytes(n, width)
    np.testing.assert_array_equal(unpack(data, width, n), codes)


@pytest.mark.parametrize("width", range(1, 17))
def test_layout_is_lsb_first_stream(width):
    rng = np.random.default_rng(width)
    codes = rng.integers(0, 1 << width, 21)
    bits = np.array([(int(c) >> k) & 1 for c in codes for k in range(width)], np.uint8)
    expected = np.packbits(bits, bitorder="little")
    data = pack(codes, width)
    np.testing.assert_array_equal(data[: expected.size], expected)
    assert not data[expected.size :].any()  # zero padding


def test_size_is_exact():
    assert packed_nbytes(1000, 3) == 375
    assert packed_nbytes(1001, 3) == 378
    assert pack(np.zeros(16, int), 4).size == 8


def test_errors():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack(np.array([16]), 4)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack(np.array([-1]), 4)
    with pytest.raises(ValueError, match="width"):
        pack(np.array([1]), 17)
    with pytest.raises(TypeError, match="integers"):
        pack(np.array([1.0]), 4)
    with pytest.raises(ValueError, match="too short"):
        unpack(np.zeros(3, np.uint8), 4, 8)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(0, 64), n=st.integers(0, 40), seed=st.integers(0, 1000))
def test_wide_round_trip(width, n, seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    v = v >> np.uint64(64 - width) if width else np.zeros(n, np.uint64)
    data = pack_wide(v, width)
    assert data.size == sum(packed_nbytes(n, f) for f in [16] * (width // 16) + [width % 16] if f)
    back, used = unpack_wide(np.concatenate([data, np.full(3, 255, np.uint8)]), width, n)
    np.testing.assert_array_equal(back, v)
    assert used == data.size


def test_wide_errors():
    with pytest.raises(ValueError, match="64"):
        pack_wide(np.zeros(3, np.uint64), 65)
    with pytest.raises(ValueError, match="ends after"):
        unpack_wide(pack_wide(np.ones(9, np.uint64), 20)[:-1], 20, 9)
