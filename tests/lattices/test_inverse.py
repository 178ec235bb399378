"""The inverse rotation as a flat program: numpy and numba give the bits of the rotation's
inverse, for every kind of length (power of two, Paley factor, block Hadamard)."""

from __future__ import annotations

import numpy as np
import pytest

from mmquant.lattices.inverse import inverse_program, inverse_rows
from mmquant.rotations import rotation

LENGTHS = [1, 2, 3, 8, 12, 24, 100, 256, 384, 1000, 28 * 8, 20 * 64]


@pytest.mark.parametrize("n", LENGTHS)
def test_program_is_the_rotation_inverse(n):
    y = np.random.default_rng(n).standard_normal((3, n))
    ref = rotation(n, 5).inverse(y)
    out = inverse_rows(y.copy(), inverse_program(n, 5))
    if n & (n - 1) == 0:
        assert np.array_equal(out, ref)
    else:  # numpy.einsum orders the sums over a Paley factor its own way
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    x = np.random.default_rng(1).standard_normal((2, n))
    back = inverse_rows(rotation(n, 5).apply(x), inverse_program(n, 5))
    np.testing.assert_allclose(back, x, atol=1e-12)


@pytest.mark.parametrize("n", LENGTHS)
def test_kernel_bit_exact(n):
    kr = pytest.importorskip("mmquant.kernels.rotation")
    y = np.random.default_rng(n + 1).standard_normal((5, n))
    prog = inverse_program(n, 9)
    assert np.array_equal(kr.inverse_rows(y.copy(), prog), inverse_rows(y.copy(), prog))


def test_bad_arguments():
    prog = inverse_program(16)
    with pytest.raises(ValueError, match="length 16"):
        inverse_rows(np.zeros((2, 8)), prog)
    with pytest.raises(ValueError, match="float64"):
        inverse_rows(np.zeros((2, 16), np.float32), prog)
    with pytest.raises(ValueError):
        inverse_program(0)
