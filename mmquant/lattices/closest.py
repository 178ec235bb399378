"""Closest lattice points in Zⁿ, Dₙ and E8 (Conway & Sloane), vectorised over many blocks.

Definitions (Conway & Sloane, *Sphere Packings, Lattices and Groups*, ch. 4 and 20):

* ``Zⁿ`` — integer vectors; ``Dₙ = {z ∈ Zⁿ : Σ z_i even}`` (checkerboard lattice, volume 2);
* ``E8 = D8 ∪ (D8 + ½·1)`` (volume 1, normalised second moment G = 929/12960).

Algorithms (one pass of vectorised numpy over the blocks, the last axis being the block):

* Zⁿ: ``f(x) = ⌊x + ½⌋`` per coordinate.
* Dₙ: ``f(x)``; if ``Σ f(x)`` is odd, re-round the coordinate with the largest ``|x_i − f(x_i)|``
  the other way (``w(x)``).
* E8: the closer of ``c₀ = Q_{D8}(x)`` and ``c₁ = Q_{D8}(x − ½) + ½``, the latter computed as
  ``⌊x⌋ + ½`` with the same parity fix (identical in exact arithmetic, one rounding less in float).

Deterministic tie rule (it decides overload at the Voronoi boundary, and the numba kernels in
:mod:`mmquant.kernels.lattice_closest` follow it bit for bit):

1. scalar rounding ties go **up**: ``⌊x + ½⌋`` (2.5 → 3, −2.5 → −2);
2. in Dₙ, among coordinates with equal largest rounding error the **lowest index** is re-rounded,
   towards ``x`` (up if ``x_i − f(x_i) ≥ 0``, else down);
3. in E8, the integer coset ``c₀`` wins when both cosets are at equal distance.

Steps 1 and 2 are invariant under translation by Dₙ vectors, so ``Q(x + λ) = Q(x) + λ`` for λ in
Dₙ (exact arithmetic). Step 3 is not invariant under the half-integer coset of E8 (it swaps the
cosets), so a point equidistant from two E8 points is resolved by where it lies; the Voronoi codes
therefore decide whether a point on the boundary of qV is a codeword with the decoder's own
reduction, never by assuming invariance (:mod:`mmquant.lattices.blockcode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = [
    "LATTICES",
    "Lattice",
    "closest_zn",
    "closest_dn",
    "closest_e8",
    "lattice",
    "max_relevant",
    "E8_G",
    "E8_NSM",
    "sq8",
]

#: Normalised second moment of E8, 929/12960 ≈ 0.0716821 (Conway & Sloane, table 2.3).
E8_NSM: float = 929.0 / 12960.0


def closest_zn(x: np.ndarray) -> np.ndarray:
    """Closest point of Zⁿ to each vector along the last axis (ties round up)."""
    x = np.asarray(x, dtype=np.float64)
    return np.floor(x + 0.5)


def _fix_parity(f: np.ndarray, d: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """Re-round, where ``odd``, the coordinate with the largest |d| (lowest index) towards x."""
    if np.any(odd):
        fo = f[odd]
        do = d[odd]
        k = np.argmax(np.abs(do), axis=-1)
        rows = np.arange(fo.shape[0])
        fo[rows, k] += np.where(do[rows, k] >= 0, 1.0, -1.0)
        f[odd] = fo
    return f


def closest_dn(x: np.ndarray) -> np.ndarray:
    """Closest point of Dₙ (integer vectors with even sum) along the last axis.

    Ties: scalar ties round up; among equally bad coordinates the lowest index is re-rounded.
    """
    x = np.asarray(x, dtype=np.float64)
    f = np.floor(x + 0.5)
    return _fix_parity(f, x - f, (np.sum(f, axis=-1) % 2) != 0)


def closest_e8(x: np.ndarray) -> np.ndarray:
    """Closest point of E8 = D8 ∪ (D8 + ½) to each 8-vector along the last axis.

    Parameters
    ----------
    x : numpy.ndarray, shape (..., 8)
        Points to quantize.

    Returns
    -------
    numpy.ndarray
        float64 array of the same shape (integer or half-integer coordinates).

    Examples
    --------
    >>> closest_e8(np.array([0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])).tolist()
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] != 8:
        raise ValueError(f"E8 blocks have length 8, got last axis {x.shape[-1]}")
    c0 = closest_dn(x)
    # D8 + ½ coset: nearest half-integers ⌊x⌋ + ½ (= Q_{D8}(x − ½) + ½ in exact arithmetic)
    c1 = np.floor(x) + 0.5
    c1 = _fix_parity(c1, x - c1, (np.sum(c1 - 0.5, axis=-1) % 2) != 0)
    d0 = sq8(x - c0)
    d1 = sq8(x - c1)
    return np.where((d1 < d0)[..., None], c1, c0)


def sq8(v: np.ndarray) -> np.ndarray:
    """Σ v_i² over the last axis, summed left to right (the order the numba kernels use)."""
    acc = v[..., 0] * v[..., 0]
    for i in range(1, v.shape[-1]):
        acc = acc + v[..., i] * v[..., i]
    return acc


def _sgn(x: np.ndarray) -> np.ndarray:
    """−1 where x < 0, else +1 (so −0.0 and 0.0 count as positive)."""
    return np.where(x < 0, -1.0, 1.0)


def max_relevant(p: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The Voronoi-relevant vector ``v`` of the lattice with the largest ``⟨p, v⟩``, per block.

    The Voronoi cell of ``qΛ`` is ``{x : ⟨x, v⟩ ≤ q·‖v‖²/2 for every relevant v}``; for the three
    lattices the relevant vectors are the minimal ones, so the maximum has a closed form
    (Conway & Sloane ch. 21):

    * E8 (the 240 roots, ‖v‖² = 2): ``s₁ = |p|₍₁₎ + |p|₍₂₎`` (two largest magnitudes, v = ±e_i ± e_j)
      or ``s₂ = ½Σ|p_i|`` minus ``|p|₍₈₎`` when an odd number of p_i are negative (v = ½(±1)⁸ with
      an even number of minus signs: the sign of the smallest |p_i| is flipped); ``s₂`` wins only
      if strictly larger;
    * D4 ⊕ D4 (the roots ±e_i ± e_j inside each half, ‖v‖² = 2): the two largest magnitudes of the
      half with the larger sum (the first half on ties);
    * Z⁸ (±e_i, ‖v‖² = 1): the largest magnitude.

    Ties between coordinates go to the lowest index; the sign of 0 is +. The numba kernels in
    :mod:`mmquant.kernels.lattice_closest` do the same operations in the same order (bit-identical).

    Parameters
    ----------
    p : numpy.ndarray, shape (N, 8)
        Points (float64).
    name : str
        ``"e8"``, ``"d4"`` or ``"zn"``.

    Returns
    -------
    s : numpy.ndarray, shape (N,)
        ``max_v ⟨p, v⟩``.
    v : numpy.ndarray, shape (N, 8)
        The maximising relevant vector.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[0]
    rows = np.arange(n)
    a = np.abs(p)
    sg = _sgn(p)
    v = np.zeros_like(p)
    if name == "zn":
        i1 = np.argmax(a, axis=1)
        v[rows, i1] = sg[rows, i1]
        return a[rows, i1], v
    if name == "d4":
        halves = []
        for off in (0, 4):
            h = a[:, off : off + 4]
            i1 = np.argmax(h, axis=1)
            h2 = h.copy()
            h2[rows, i1] = -1.0
            i2 = np.argmax(h2, axis=1)
            halves.append((h[rows, i1] + h[rows, i2], i1 + off, i2 + off))
        (s0, a0, b0), (s1, a1, b1) = halves
        second = s1 > s0
        i1 = np.where(second, a1, a0)
        i2 = np.where(second, b1, b0)
        v[rows, i1] = sg[rows, i1]
        v[rows, i2] = sg[rows, i2]
        return np.where(second, s1, s0), v
    i1 = np.argmax(a, axis=1)
    a2 = a.copy()
    a2[rows, i1] = -1.0
    i2 = np.argmax(a2, axis=1)
    s1 = a[rows, i1] + a[rows, i2]
    m = np.argmin(a, axis=1)
    odd = (np.sum(p < 0, axis=1) % 2) == 1
    tot = a[:, 0]
    for i in range(1, 8):
        tot = tot + a[:, i]
    s2 = 0.5 * tot - np.where(odd, a[rows, m], 0.0)
    half = s2 > s1
    v1 = np.zeros_like(p)
    v1[rows, i1] = sg[rows, i1]
    v1[rows, i2] = sg[rows, i2]
    v2 = 0.5 * sg
    v2[rows, m] = np.where(odd, -v2[rows, m], v2[rows, m])
    return np.where(half, s2, s1), np.where(half[:, None], v2, v1)


@cache
def _gens() -> dict[str, np.ndarray]:
    e8 = np.zeros((8, 8))
    e8[0, 0] = 2.0
    for i in range(1, 7):
        e8[i, i - 1] = -1.0
        e8[i, i] = 1.0
    e8[7, :] = 0.5
    d4 = np.array([[-1.0, -1, 0, 0], [1, -1, 0, 0], [0, 1, -1, 0], [0, 0, 1, -1]])
    return {"e8": e8, "d4": d4}


#: Generator of E8 (rows are basis vectors, Conway & Sloane eq. (4.100) up to ordering): λ = c·G.
E8_G: np.ndarray = _gens()["e8"]


@dataclass(frozen=True)
class Lattice:
    """A lattice used by the Voronoi codes.

    Attributes
    ----------
    name : str
        ``"zn"`` (Z⁸, i.e. scalar rounding), ``"d4"`` (D4 ⊕ D4) or ``"e8"``.
    dim : int
        Block length d (8 for all three, so that they share one β index per 8 entries).
    generator : numpy.ndarray
        d×d generator ``G`` with basis vectors as rows; points are ``λ = c·G``, ``c ∈ Z^d``.
    nsm : float
        Normalised second moment G(Λ) of the lattice.
    relevant_norm_sq : float
        ‖v‖² of its Voronoi-relevant vectors (2 for E8 and D4, 1 for Z⁸): ``x`` lies in the Voronoi
        cell of ``qΛ`` iff ``max_v ⟨x, v⟩ ≤ q·‖v‖²/2`` (:func:`max_relevant`).
    """

    name: str
    dim: int
    generator: np.ndarray
    nsm: float
    relevant_norm_sq: float

    def closest(self, x: np.ndarray) -> np.ndarray:
        """Closest lattice point to each block (last axis of length ``dim``)."""
        if self.name == "e8":
            return closest_e8(x)
        if self.name == "d4":
            x = np.asarray(x, dtype=np.float64)
            return closest_dn(x.reshape(*x.shape[:-1], 2, 4)).reshape(x.shape)
        return closest_zn(x)

    @property
    def generator_inverse(self) -> np.ndarray:
        """``G⁻¹`` (entries multiples of ½ for E8 and D4, so ``λ·G⁻¹`` is exact in float64)."""
        return _ginv(self.name)

    @property
    def volume(self) -> float:
        """Volume of a Voronoi cell, ``|det G|``."""
        return float(abs(np.linalg.det(self.generator)))


@cache
def _ginv(name: str) -> np.ndarray:
    g = LATTICES[name].generator
    inv = np.linalg.inv(g)
    inv = np.round(inv * 4) / 4  # exact: entries are multiples of 1/2 (1/4 to be safe)
    inv.setflags(write=False)
    return inv


LATTICES: dict[str, Lattice] = {
    "e8": Lattice("e8", 8, E8_G, E8_NSM, 2.0),
    "d4": Lattice("d4", 8, np.kron(np.eye(2), _gens()["d4"]), 0.0766032, 2.0),
    "zn": Lattice("zn", 8, np.eye(8), 1.0 / 12.0, 1.0),
}


def lattice(name: str) -> Lattice:
    """The :class:`Lattice` called ``name`` (``"e8"``, ``"d4"`` or ``"zn"``)."""
    if name not in LATTICES:
        raise ValueError(f"unknown lattice {name!r}; available: {', '.join(LATTICES)}")
    return LATTICES[name]
