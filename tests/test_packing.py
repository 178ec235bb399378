import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmquant.packing import pack, packed_nbytes, unpack


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
