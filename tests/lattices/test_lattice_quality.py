"""Quality on iid Gaussian matrices and the worst-case guarantee on adversarial ones.

Quality targets (issue 4) and what is measured (``mmquant compare``, 4096×256 A and B, seed 0):
entropy-coded E8 at 4 bits: 0.97 dB above Γ (target ≤ 1.1 dB); fixed-rate E8 Voronoi q = 14 with
4 β: 1.84 dB above Γ at 4.064 bits with the scale index of every block sent on its own (the
NestQuant layout; 2.16 dB without the projection search), and 1.65 dB at 4.013 bits with the
scale indices of 32 blocks coded jointly (``group=32``; target ≤ 1.8 dB). The tests use 2048×96
matrices (1.87, 1.71 and 1.02 dB there) and assert with a margin for the smaller size.
"""

import numpy as np
import pytest

import mmquant as mq
from mmquant.theory.matmul_rd import gamma


def _int4_g32_error(a, b):
    """Reference scalar format: absmax INT4 (levels −7..7), groups of 32, float16 scales.

    Rate 4 + 16/32 = 4.5 bits/entry. Written here so that the comparison does not depend on the
    scalar-format modules.
    """

    def q(x):  # quantize along the last axis
        g = x.reshape(x.shape[0], -1, 32)
        s = (np.abs(g).max(axis=2, keepdims=True) / 7).astype(np.float16).astype(np.float64)
        s = np.where(s > 0, s, 1.0)
        return (np.clip(np.round(g / s), -7, 7) * s).reshape(x.shape)

    ah, bh = q(a.T).T, q(b.T).T
    n = a.shape[0]
    return float(np.sum((a.T @ b - ah.T @ bh) ** 2)) * n / (np.sum(a * a) * np.sum(b * b))


@pytest.fixture(scope="module")
def gaussian_pair():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2048, 96)), rng.standard_normal((2048, 96))


def test_entropy_coded_e8_gap(gaussian_pair):
    a, b = gaussian_pair
    rep = mq.product_error(a, b, "e8ec:rate=4")
    assert 3.95 < rep.rate < 4.1
    assert 0.5 < rep.gap_db < 1.25  # 4096×256: 0.96 dB


def test_voronoi_e8_gap_and_beats_int4(gaussian_pair):
    a, b = gaussian_pair
    rep = mq.product_error(a, b, "e8:q=14,betas=4")
    assert 4.06 < rep.rate < 4.08
    assert rep.gap_db < 2.05  # measured 1.87 dB
    int4 = _int4_g32_error(a, b)
    assert rep.error < int4  # at 4.07 vs 4.5 bits/entry
    ec = mq.product_error(a, b, "e8ec:rate=4.5")
    assert ec.error < int4 / 2  # entropy-coded E8 at equal rate: more than 3 dB better
    d4 = mq.product_error(a, b, "d4:q=14,betas=4")
    zn = mq.product_error(a, b, "zn:q=14,betas=4")
    assert rep.error < d4.error < zn.error  # better lattices, better products


def test_grouped_scale_indices_gap(gaussian_pair):
    """E8, q = 14, 4 β with the scale indices of 32 blocks coded jointly: ≤ 1.8 dB above Γ."""
    a, b = gaussian_pair
    grouped = mq.product_error(a, b, "e8:q=14,betas=4,group=32")
    plain = mq.product_error(a, b, "e8:q=14,betas=4")
    assert 4.0 < grouped.rate < 4.03
    assert grouped.gap_db < 1.8  # measured 1.71 dB (1.65 dB on 4096×256)
    assert grouped.gap_db < plain.gap_db - 0.1


def _cases():
    rng = np.random.default_rng(5)
    n = 1024
    u = rng.standard_normal((n, 2))
    huge = rng.standard_normal((n, 48))
    huge[:, 3] *= 1e4
    return {
        "heavy-tailed (Student t, 2 dof)": (rng.standard_t(2, (n, 48)), rng.standard_t(2, (n, 48))),
        "low rank (rank 2)": (u @ rng.standard_normal((2, 48)), u @ rng.standard_normal((2, 40))),
        "one huge column, B with mean 3": (huge, rng.standard_normal((n, 32)) + 3.0),
        "large column means": (
            np.abs(rng.standard_normal((n, 48))) * 5 + 2,
            rng.standard_normal((n, 32)) + 1,
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize(
    "spec",
    [
        "e8:q=14,betas=4,center=true",
        "e8:q=14,betas=4,center=true,dither=true",
        "e8ec:rate=4,center=true",
    ],
)
def test_guarantee_on_adversarial_matrices(case, spec):
    """Measured ‖AᵀB − ÂᵀB̂‖² ≤ M·[Γ²‖ĀᵀB̄‖² + (Γ − Γ²)‖Ā‖²‖B̄‖²/n], Γ = Γ(measured rate).

    The bracket is the guarantee of THEORY.md §1 (arXiv 2410.13780, shape as reconstructed there;
    Ā, B̄ the column-centred matrices) for an ideal nested-lattice quantizer. Our practical
    quantizers are 1–1.9 dB above Γ on Gaussian data, and the first term scales with the square
    of that excess, so the documented margin is M = 4 (6 dB). Measured ratios (seed 5; e8,
    e8 with dither, e8ec): heavy-tailed 1.57/1.53/1.39, low rank 2.72/3.20/2.00, one huge column
    1.51/1.59/1.20, large means 1.81/1.64/1.54. (Before the projection search an overloaded
    block of the huge column gave 4.5 with dither: a wrapped point is far from the input.)
    """
    a, b = _cases()[case]
    q = mq.get(spec)
    ea, eb = q.encode(a.T), q.encode(b.T)
    err = float(np.sum((a.T @ b - q.decode(ea) @ q.decode(eb).T) ** 2))
    g = float(gamma(0.5 * (ea.bits_per_entry + eb.bits_per_entry)))
    ab, bb = a - a.mean(0), b - b.mean(0)
    n = a.shape[0]
    bound = g * g * np.sum((ab.T @ bb) ** 2) + (g - g * g) * np.sum(ab**2) * np.sum(bb**2) / n
    assert err <= 4.0 * bound
