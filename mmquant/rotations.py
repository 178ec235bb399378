"""Seeded orthogonal rotations along the last axis: randomized and block Hadamard, Haar orthogonal.

A rotation ``y = x·Uᵀ`` (``U`` orthogonal, applied to every row of ``x``) spreads the energy of a
vector evenly over its coordinates, so that a lattice or scalar quantizer sees nearly Gaussian,
outlier-free blocks (QuaRot, QuIP#, NestQuant arXiv 2502.09720). Both sides of a product use the
same ``U``, and ``(xUᵀ)(yUᵀ)ᵀ = xyᵀ``, so the product is unchanged.

Randomized Hadamard transform, for ``n = m·2^k`` with ``m ∈ {1, 12, 20, 28}``::

    U = (H_m ⊗ H_{2^k}) · diag(s) / √n,       s ∈ {±1}^n iid uniform from the seed,

``H_{2^k}`` the Sylvester–Hadamard matrix (applied by the O(n log n) fast Walsh–Hadamard transform)
and ``H_m`` a Hadamard matrix of order ``m`` built by Paley's constructions (not pasted tables):

* Paley I, ``q ≡ 3 (mod 4)`` prime, order ``q + 1``: ``H = I + S`` with ``S = [[0, 1ᵀ], [−1, Q]]``
  and ``Q_ij = χ(j − i)`` (Legendre symbol): ``m = 12`` (q = 11), ``m = 20`` (q = 19).
* Paley II, ``q ≡ 1 (mod 4)`` prime, order ``2(q + 1)``: the symmetric conference matrix
  ``C = [[0, 1ᵀ], [1, Q]]`` and ``H = C ⊗ [[1, −1], [−1, −1]] + I ⊗ [[1, 1], [1, −1]]``:
  ``m = 28`` (q = 13).

Block Hadamard (any ``n``, :class:`BlockHadamard`): two layers of block-diagonal randomized
Hadamard transforms over a greedy cover of ``n`` by supported orders (``9000 = 8192 + 768 + 40``),
the second layer's blocks placed from the other end so that its largest block mixes the first
layer's small blocks with its large one. ``O(n log n)`` time and ``O(n)`` memory, like the
randomized Hadamard transform; :func:`rotation` uses it for every ``n`` without a Hadamard matrix.

Random orthogonal (any ``n``, only on request): ``U = Q·diag(sign(diag R))`` from the QR
factorisation of a Gaussian matrix (Haar distributed), ``O(n²)`` memory and ``O(n³)`` to build.

References
----------
.. [1] R. E. A. C. Paley, "On orthogonal matrices", J. Math. Phys. 12 (1933).
.. [2] S. Savkin, E. Porat, O. Ordentlich, Y. Polyanskiy, "NestQuant: nested lattice quantization
   for matrix products and LLMs", arXiv:2502.09720.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from mmquant.validation import check_choice, check_int

__all__ = [
    "HADAMARD_ORDERS",
    "ROTATION_VERSION",
    "BlockHadamard",
    "RandomizedHadamard",
    "RandomOrthogonal",
    "hadamard_blocks",
    "hadamard_matrix",
    "hadamard_supported",
    "fwht",
    "random_orthogonal",
    "rotation",
    "rotation_scheme",
]

#: Orders m of the non-power-of-two Hadamard factors (Paley constructions), besides m = 1.
HADAMARD_ORDERS: tuple[int, ...] = (12, 20, 28)
_PALEY = {12: (1, 11), 20: (1, 19), 28: (2, 13)}  # m -> (construction, prime q)

#: Version of the rule by which ``rotation(n, seed)`` (kind ``"auto"``) picks its rotation.
#: 1: :class:`RandomizedHadamard` for supported n, else a Haar :class:`RandomOrthogonal` (O(n²)).
#: 2: :class:`RandomizedHadamard` for supported n (unchanged), else :class:`BlockHadamard`.
#: Codes made with a rotation of an unsupported n under version 1 decode differently under 2.
ROTATION_VERSION = 2


def _legendre(a: np.ndarray, q: int) -> np.ndarray:
    """χ(a) for prime q: 0 if a ≡ 0, +1 for quadratic residues, −1 otherwise."""
    residues = np.zeros(q, bool)
    residues[(np.arange(1, q) ** 2) % q] = True
    a = np.mod(a, q)
    return np.where(a == 0, 0, np.where(residues[a], 1, -1))


def _jacobsthal(q: int) -> np.ndarray:
    i = np.arange(q)
    return _legendre(i[None, :] - i[:, None], q)


@cache
def _hadamard_small(m: int) -> np.ndarray:
    if m == 1:
        return np.ones((1, 1))
    kind, q = _PALEY[m]
    Q = _jacobsthal(q)
    if kind == 1:
        S = np.zeros((q + 1, q + 1))
        S[0, 1:] = 1
        S[1:, 0] = -1
        S[1:, 1:] = Q
        H = np.eye(q + 1) + S
    else:
        C = np.zeros((q + 1, q + 1))
        C[0, 1:] = 1
        C[1:, 0] = 1
        C[1:, 1:] = Q
        H = np.kron(C, np.array([[1.0, -1.0], [-1.0, -1.0]])) + np.kron(
            np.eye(q + 1), np.array([[1.0, 1.0], [1.0, -1.0]])
        )
    H.setflags(write=False)
    return H


def _split(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m·2^k and m in {1, 12, 20, 28}, or None."""
    for m in (1, *HADAMARD_ORDERS):
        if n % m == 0:
            p = n // m
            if p & (p - 1) == 0:
                return m, p
    return None


def hadamard_supported(n: int) -> bool:
    """Whether a Hadamard matrix of order ``n = m·2^k`` (m ∈ {1, 12, 20, 28}) is available."""
    return isinstance(n, (int, np.integer)) and n >= 1 and _split(int(n)) is not None


def hadamard_matrix(n: int) -> np.ndarray:
    """Unnormalised ±1 Hadamard matrix ``H_m ⊗ H_{2^k}`` of order ``n`` (``HHᵀ = n·I``).

    Raises
    ------
    ValueError
        If ``n`` is not of the form ``m·2^k`` with ``m`` in {1, 12, 20, 28}.
    """
    n = check_int(n, "n", lo=1)
    sp = _split(n)
    if sp is None:
        raise ValueError(_unsupported(n))
    m, p = sp
    return np.kron(_hadamard_small(m), fwht(np.eye(p)))


def _unsupported(n: int) -> str:
    return (
        f"no Hadamard matrix of order n={n}: supported n = m·2^k with m in "
        f"{{1, {', '.join(map(str, HADAMARD_ORDERS))}}} (e.g. 256, 384 = 12·32, 1536 = 12·128); "
        "use BlockHadamard(n, seed) or rotation(n, seed) for other sizes"
    )


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (length a power of two).

    Computes ``x·H`` with ``H`` the Sylvester–Hadamard matrix (symmetric, ``H² = n·I``) in
    ``O(n log n)`` vectorised butterflies; returns a new float array.
    """
    y = np.array(x, dtype=np.result_type(np.asarray(x).dtype, np.float32), copy=True)
    n = y.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    lead = y.shape[:-1]
    h = 1
    while h < n:
        v = y.reshape(*lead, n // (2 * h), 2, h)
        a = v[..., 0, :].copy()
        b = v[..., 1, :]
        v[..., 0, :] += b
        b *= -1
        b += a
        h *= 2
    return y


@dataclass(frozen=True)
class RandomizedHadamard:
    """Randomized Hadamard rotation ``U = (H_m ⊗ H_{2^k})·diag(s)/√n`` (see module docstring).

    Parameters
    ----------
    n : int
        Length of the rotated axis, ``m·2^k`` with ``m`` in {1, 12, 20, 28}.
    seed : int
        Seed of the random signs ``s`` (``numpy.random.default_rng(seed)``).

    Examples
    --------
    >>> import numpy as np
    >>> r = RandomizedHadamard(384, seed=1)
    >>> x = np.arange(384.0)
    >>> bool(np.allclose(r.inverse(r.apply(x)), x))
    True
    """

    n: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.n, "n", lo=1)
        check_int(self.seed, "seed", lo=0)
        if _split(self.n) is None:
            raise ValueError(_unsupported(self.n))

    @property
    def signs(self) -> np.ndarray:
        """The random ±1 signs ``s`` (float64)."""
        return _signs(self.n, self.seed)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.n:
            raise ValueError(f"last axis must have length {self.n}, got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        return x

    def _hadamard(self, x: np.ndarray, transpose: bool) -> np.ndarray:
        return _normalized_hadamard(x, transpose)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``y = U x`` for every vector ``x`` along the last axis (same dtype, float32/64)."""
        x = self._check(x)
        return self._hadamard(x * self.signs.astype(x.dtype), transpose=False)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """``x = Uᵀ y`` along the last axis (exact inverse of :meth:`apply` up to rounding)."""
        y = self._check(y)
        return self._hadamard(y, transpose=True) * self.signs.astype(y.dtype)

    def matrix(self) -> np.ndarray:
        """The n×n orthogonal matrix ``U`` (float64), with ``apply(x) = U @ x``."""
        return self.apply(np.eye(self.n)).T


def _normalized_hadamard(x: np.ndarray, transpose: bool) -> np.ndarray:
    """``x·(H_m ⊗ H_{2^k})ᵀ/√n`` along the last axis (``Hᵀ`` instead of ``H`` if ``transpose``)."""
    n = x.shape[-1]
    m, p = _split(n)  # type: ignore[misc]
    y = fwht(x.reshape(*x.shape[:-1], m, p))
    if m > 1:
        hm = _hadamard_small(m).astype(y.dtype)
        y = np.einsum("ab,...bj->...aj", hm.T if transpose else hm, y)
    return y.reshape(x.shape) * y.dtype.type(1.0 / np.sqrt(n))


@lru_cache(maxsize=64)
def _signs(n: int, seed: int) -> np.ndarray:
    s = np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0)
    s.setflags(write=False)
    return s


def hadamard_blocks(n: int) -> tuple[int, ...]:
    """Greedy cover of ``n`` by supported Hadamard orders, largest first (:class:`BlockHadamard`).

    Repeatedly takes the largest ``m·2^k ≤ r`` (m ∈ {1, 12, 20, 28}) of what remains ``r``: the
    supported orders between ``16·2^j`` and ``32·2^j`` are 4·2^j apart, so the first block holds
    more than half of ``n`` (at least 80% for ``n ≥ 16``) and each step from ``r ≥ 16`` leaves
    less than ``r/4``: ``O(log n)`` blocks (at most 8 for ``n < 2^17``).
    ``hadamard_blocks(9000) == (8192, 768, 40)``.
    """
    r = check_int(n, "n", lo=1)
    out = []
    while r:
        best = 1
        for m in (1, *HADAMARD_ORDERS):
            if m <= r:
                best = max(best, m << ((r // m).bit_length() - 1))
        out.append(best)
        r -= best
    return tuple(out)


@dataclass(frozen=True)
class BlockHadamard:
    """Two layers of block-diagonal randomized Hadamard transforms: any ``n``, ``O(n log n)``.

    With ``b₁ ≥ b₂ ≥ … ≥ b_t`` the blocks of :func:`hadamard_blocks` (``Σ b_i = n``)::

        U = B₂·D₂·P·B₁·D₁,     D₁, D₂ = diag(±1) iid uniform from the seed,

    where ``B₁`` applies the normalised Hadamard transform ``(H_m ⊗ H_{2^k})/√b`` of each block
    to the coordinates ``[0, b₁), [b₁, b₁ + b₂), …`` (largest first), ``B₂`` the same blocks
    placed from the other end (``[n − b₁, n)``, then ``[n − b₁ − b₂, n − b₁)``, …), and ``P`` a
    seeded uniform permutation of the coordinates ``[n − b₁, n)`` of ``B₂``'s largest block.
    Every factor is orthogonal, so ``U`` is; it costs ``O(n log n)`` time and ``O(n)`` memory
    (2n signs and ``b₁`` indices) per vector, like :class:`RandomizedHadamard`, and no ``n×n``
    matrix is formed.

    Mixing: since ``b₁ > n/2``, the largest block of the second layer ``[n − b₁, n)`` contains
    every small block of the first layer and meets its largest block ``[0, b₁)``: the energy of
    every input coordinate enters that block, and that of ``j < b₁`` every block. Every
    entry of ``U`` is, over the signs ``D₂``, a Rademacher sum whose squared coefficients add up
    to at most ``1/b₁``: sub-Gaussian with variance proxy ``1/b₁ ≤ 1.25/n`` (``n ≥ 16``), the
    ``1/n`` of a randomized Hadamard matrix up to that factor. ``P`` scatters a small block's
    coordinates over the large block (without it the Sylvester structure maps a contiguous
    run of coordinates to a sparse output); with it, a spike ``e_j`` comes out with
    participation ratio ``1/Σ_i U_ij⁴`` about n/3 (median over j; the minimum is above n/5 for
    n = 100 … 9000), as for a Haar random rotation. A permutation of all n coordinates instead
    would leave some coordinates of small first-layer blocks in small second-layer blocks.

    For an ``n`` with a Hadamard matrix of its own, :class:`RandomizedHadamard` is one layer
    and exact (``|U_ij| = 1/√n``); :func:`rotation` uses this class for every other ``n``.

    Parameters
    ----------
    n : int
        Length of the rotated axis (any ``n ≥ 1``).
    seed : int
        Seed of ``D₁, D₂, P`` (``numpy.random.default_rng(seed)``: n uniforms for ``D₁``, n for
        ``D₂``, then ``permutation(b₁)``).

    Examples
    --------
    >>> import numpy as np
    >>> r = BlockHadamard(9000, seed=1)
    >>> x = np.random.default_rng(0).standard_normal((2, 9000))
    >>> bool(np.allclose(r.inverse(r.apply(x)), x))
    True
    """

    n: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.n, "n", lo=1)
        check_int(self.seed, "seed", lo=0)

    @property
    def blocks(self) -> tuple[int, ...]:
        """Block sizes ``b₁ ≥ b₂ ≥ …`` (:func:`hadamard_blocks`)."""
        return hadamard_blocks(self.n)

    @property
    def signs(self) -> np.ndarray:
        """(2, n) float64: the signs of ``D₁`` (row 0) and ``D₂`` (row 1)."""
        return _block_randomness(self.n, self.seed)[0]

    @property
    def permutation(self) -> np.ndarray:
        """(b₁,) int64: the permutation ``P`` of the second layer's largest block."""
        return _block_randomness(self.n, self.seed)[1]

    def _layers(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(start, stop) of every block of ``B₁`` and of ``B₂``."""
        first, second = [], []
        lo, hi = 0, self.n
        for b in self.blocks:
            first.append((lo, lo + b))
            second.append((hi - b, hi))
            lo, hi = lo + b, hi - b
        return first, second

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.n:
            raise ValueError(f"last axis must have length {self.n}, got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        return x

    @staticmethod
    def _layer(y: np.ndarray, blocks: list[tuple[int, int]], transpose: bool) -> None:
        for lo, hi in blocks:  # in place, one block at a time (temporaries of one block)
            y[..., lo:hi] = _normalized_hadamard(y[..., lo:hi], transpose)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``y = U x`` for every vector ``x`` along the last axis (same dtype, float32/64)."""
        x = self._check(x)
        s = self.signs.astype(x.dtype)
        first, second = self._layers()
        w = self.n - self.blocks[0]
        y = x * s[0]
        self._layer(y, first, transpose=False)
        y[..., w:] = y[..., w:][..., self.permutation]
        y *= s[1]
        self._layer(y, second, transpose=False)
        return y

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """``x = Uᵀ y`` along the last axis (exact inverse of :meth:`apply` up to rounding)."""
        y = self._check(y)
        s = self.signs.astype(y.dtype)
        first, second = self._layers()
        w = self.n - self.blocks[0]
        x = y.copy()
        self._layer(x, second, transpose=True)
        x *= s[1]
        x[..., w + self.permutation] = x[..., w:].copy()
        self._layer(x, first, transpose=True)
        x *= s[0]
        return x

    def matrix(self) -> np.ndarray:
        """The n×n orthogonal matrix ``U`` (float64), with ``apply(x) = U @ x`` (O(n²) memory)."""
        return self.apply(np.eye(self.n)).T


@lru_cache(maxsize=16)
def _block_randomness(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = np.where(rng.random(2 * n) < 0.5, -1.0, 1.0).reshape(2, n)
    p = rng.permutation(hadamard_blocks(n)[0])
    s.setflags(write=False)
    p.setflags(write=False)
    return s, p


@dataclass(frozen=True)
class RandomOrthogonal:
    """Haar-random orthogonal rotation from the QR factorisation of a seeded Gaussian matrix.

    ``U = Q·diag(sign(diag R))`` where ``G = QR``, ``G`` n×n iid N(0, 1) from
    ``numpy.random.default_rng(seed)``. ``O(n²)`` per vector; works for any ``n``.
    """

    n: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.n, "n", lo=1)
        check_int(self.seed, "seed", lo=0)

    def matrix(self) -> np.ndarray:
        """The n×n orthogonal matrix ``U`` (float64)."""
        return _haar(self.n, self.seed)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``y = U x`` along the last axis."""
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.n:
            raise ValueError(f"last axis must have length {self.n}, got shape {x.shape}")
        dt = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        return (x.astype(dt, copy=False) @ self.matrix().T.astype(dt)).astype(dt, copy=False)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """``x = Uᵀ y`` along the last axis."""
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[-1] != self.n:
            raise ValueError(f"last axis must have length {self.n}, got shape {y.shape}")
        dt = y.dtype if y.dtype in (np.float32, np.float64) else np.float64
        return (y.astype(dt, copy=False) @ self.matrix().astype(dt)).astype(dt, copy=False)


@lru_cache(maxsize=8)
def _haar(n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(g)
    u = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
    u.setflags(write=False)
    return u


def random_orthogonal(n: int, seed: int = 0) -> np.ndarray:
    """Haar-random n×n orthogonal matrix (QR of a Gaussian matrix, signs fixed by ``diag R > 0``)."""
    return RandomOrthogonal(n, seed).matrix().copy()


def rotation(
    n: int, seed: int = 0, kind: str = "auto"
) -> RandomizedHadamard | BlockHadamard | RandomOrthogonal:
    """A seeded rotation of length ``n``.

    Parameters
    ----------
    n : int
        Length of the rotated (last) axis.
    seed : int
        Seed of the randomness.
    kind : {"auto", "hadamard", "block", "orthogonal"}
        ``"auto"``: :class:`RandomizedHadamard` when ``n = m·2^k`` is supported, else
        :class:`BlockHadamard` (both ``O(n log n)`` per vector; :data:`ROTATION_VERSION`).
        ``"orthogonal"`` (:class:`RandomOrthogonal`, an ``O(n²)`` Haar matrix) is never chosen
        automatically.
    """
    check_choice(kind, "kind", ("auto", "hadamard", "block", "orthogonal"))
    n = check_int(n, "n", lo=1)
    if kind == "hadamard" or (kind == "auto" and _split(n) is not None):
        return RandomizedHadamard(n, seed)
    if kind == "orthogonal":
        return RandomOrthogonal(n, seed)
    return BlockHadamard(n, seed)


def rotation_scheme(n: int, kind: str = "auto") -> str:
    """Name of the rotation :func:`rotation` builds: ``"hadamard"``, ``"block"`` or ``"orthogonal"``.

    With :data:`ROTATION_VERSION`, what a file format can record to tell which rotation its
    codes were made with.
    """
    check_choice(kind, "kind", ("auto", "hadamard", "block", "orthogonal"))
    n = check_int(n, "n", lo=1)
    if kind == "auto":
        return "hadamard" if _split(n) is not None else "block"
    return kind
