"""Seeded orthogonal rotations along the last axis: randomized Hadamard and random orthogonal.

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

Random orthogonal (any ``n``): ``U = Q·diag(sign(diag R))`` from the QR factorisation of a Gaussian
matrix (Haar distributed), an O(n²) fallback.

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
    "RandomizedHadamard",
    "RandomOrthogonal",
    "hadamard_matrix",
    "hadamard_supported",
    "fwht",
    "random_orthogonal",
    "rotation",
]

#: Orders m of the non-power-of-two Hadamard factors (Paley constructions), besides m = 1.
HADAMARD_ORDERS: tuple[int, ...] = (12, 20, 28)
_PALEY = {12: (1, 11), 20: (1, 19), 28: (2, 13)}  # m -> (construction, prime q)


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
        "use random_orthogonal(n, seed) or rotation(n, seed, kind='auto') for other sizes"
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
        m, p = _split(self.n)  # type: ignore[misc]
        y = fwht(x.reshape(*x.shape[:-1], m, p))
        if m > 1:
            hm = _hadamard_small(m).astype(y.dtype)
            y = np.einsum("ab,...bj->...aj", hm.T if transpose else hm, y)
        return y.reshape(x.shape) * y.dtype.type(1.0 / np.sqrt(self.n))

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


@lru_cache(maxsize=64)
def _signs(n: int, seed: int) -> np.ndarray:
    s = np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0)
    s.setflags(write=False)
    return s


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


def rotation(n: int, seed: int = 0, kind: str = "auto") -> RandomizedHadamard | RandomOrthogonal:
    """A seeded rotation of length ``n``.

    Parameters
    ----------
    n : int
        Length of the rotated (last) axis.
    seed : int
        Seed of the randomness.
    kind : {"auto", "hadamard", "orthogonal"}
        ``"auto"``: randomized Hadamard when ``n = m·2^k`` is supported, else random orthogonal.
    """
    check_choice(kind, "kind", ("auto", "hadamard", "orthogonal"))
    n = check_int(n, "n", lo=1)
    if kind == "hadamard" or (kind == "auto" and _split(n) is not None):
        return RandomizedHadamard(n, seed)
    return RandomOrthogonal(n, seed)
