"""The nested-lattice (Voronoi) code of blocks of 8 entries with several scales β.

For a lattice Λ (E8, D4 ⊕ D4 or Z⁸, blocks of d = 8 entries) with generator ``G`` and an integer
``q ≥ 2``, the Voronoi code is the set of points of Λ inside the Voronoi cell of ``qΛ``: ``q^8``
points, indexed by ``b = λ·G⁻¹ mod q``. One 8-block ``z`` is coded with scale β and dither ``u``
(THEORY.md §2, §8)::

    encode:  λ = Q_Λ(z/β − u);   b = λ·G⁻¹ mod q                      (integers in [0, q))
    decode:  y = b·G − q·Q_Λ(b·G / q);   ẑ = β·(y + u)
    overload: y ≠ λ  (λ outside the Voronoi cell of qΛ; the wrapped point y is then far away)

Membership: λ is a codeword iff the decoder returns it. With ``s = max_v ⟨λ, v⟩`` over the
Voronoi-relevant vectors (:func:`mmquant.lattices.closest.max_relevant`), ``s < q‖v‖²/2`` means
strictly inside qV (a codeword, no computation) and ``s > q‖v‖²/2`` strictly outside; on the
boundary the encoder computes ``y`` exactly as the decoder does (from the reduced digits), so that
the tie rule picks the same representative of the coset on both sides.

Projection search (``search=True``): an overloaded block is not sent as its wrapped point. For
each margin ``t ∈ PROJECT_MARGINS = (0, 1)`` the point ``x = z/β − u`` is moved onto
``{p : max_v ⟨p, v⟩ ≤ q‖v‖²/2 − t}`` by ``PROJECT_STEPS = 2`` orthogonal projections on the most
violated facet, rounded to Λ, and kept if it is a codeword; the best such codeword (the origin
if none) is sent. The decoder is unchanged.

With ``k`` scales ``β₁ < … < β_k`` every block picks one (``rule``): ``"least-error"`` (try all,
keep the smallest ‖z − ẑ‖²) or ``"no-overload"`` (the smallest β that does not overload; the
largest if all do); or the scales of a group of blocks are chosen jointly under a weight budget
(:func:`voronoi_encode_grouped`, :mod:`mmquant.lattices.grouping`). Each scale may have its own
code size q_j (a union code). How the digits and scale indices become bytes is the business of
:mod:`mmquant.lattices.indexcoders`; the scales themselves come from :mod:`mmquant.lattices.scales`.

``backend="numba"`` runs the kernels of :mod:`mmquant.kernels.lattice_block` (bit-identical to
the numpy reference here); the lattice's constants and the search parameters are passed to them.

References
----------
.. [1] J. H. Conway, N. J. A. Sloane, "A fast encoding method for lattice codes and quantizers",
   IEEE Trans. Inf. Theory 29 (1983).
.. [2] S. Savkin, E. Porat, O. Ordentlich, Y. Polyanskiy, "NestQuant: nested lattice quantization
   for matrix products and LLMs", arXiv:2502.09720.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmquant.kernels import use_numba
from mmquant.lattices import grouping
from mmquant.lattices.chunks import chunk_entries
from mmquant.lattices.closest import Lattice, lattice, max_relevant
from mmquant.lattices.closest import sq8 as _sq8

__all__ = [
    "RULES",
    "PROJECT_MARGINS",
    "PROJECT_STEPS",
    "VoronoiBlocks",
    "code_sizes",
    "dither",
    "voronoi_encode_blocks",
    "voronoi_encode_grouped",
    "voronoi_decode_blocks",
]

RULES = ("least-error", "no-overload")
#: Margins t of the projection search: targets ``max_v⟨p, v⟩ ≤ q‖v‖²/2 − t`` (see module docstring).
PROJECT_MARGINS = (0.0, 1.0)
#: Projections on the most violated facet per search target.
PROJECT_STEPS = 2


def dither(n_blocks: int, lat: Lattice, seed: int) -> np.ndarray:
    """Dither blocks uniform over the Voronoi cell of Λ: ``u = v − Q_Λ(v)``, v uniform on a basis cell.

    ``v`` is one product of the (n_blocks, 8) uniforms with the generator (its rounding depends
    on how the BLAS tiles the rows, so it is never split); ``u`` is computed in place, a chunk
    of rows at a time.
    """
    v = np.random.default_rng(seed).random((n_blocks, 8)) @ lat.generator
    step = chunk_entries(8 * n_blocks) // 8
    for b0 in range(0, n_blocks, step):
        c = v[b0 : b0 + step]
        c -= lat.closest(c)
    return v


@dataclass(frozen=True)
class VoronoiBlocks:
    """Result of :func:`voronoi_encode_blocks` on ``N`` blocks of 8.

    Attributes
    ----------
    digits : numpy.ndarray
        (N, 8) ``int64`` base-q digits ``b`` in [0, q).
    beta_index : numpy.ndarray
        (N,) ``int64`` index of the chosen β.
    estimate : numpy.ndarray
        (N, 8) float64 reconstruction ``ẑ = β·(y + u)`` (before MMSE scaling).
    overload : numpy.ndarray
        (N,) bool: at the chosen β the nearest lattice point ``Q_Λ(z/β − u)`` lies outside the
        code (the block was then coded by its wrapped point, or, with the search, by a projection).
    error : numpy.ndarray
        (N,) float64 squared error ``‖z − ẑ‖²`` of every block (summed left to right).
    """

    digits: np.ndarray
    beta_index: np.ndarray
    estimate: np.ndarray
    overload: np.ndarray
    error: np.ndarray

    def part(self, i: slice) -> VoronoiBlocks:
        """The blocks ``i`` of every array."""
        return VoronoiBlocks(
            self.digits[i], self.beta_index[i], self.estimate[i], self.overload[i], self.error[i]
        )


def _reduce(lat: Lattice, digits: np.ndarray, q: int) -> np.ndarray:
    """y = b·G − q·Q_Λ(b·G/q): the Voronoi-cell representative of the coset b."""
    lam = digits @ lat.generator
    return lam - q * lat.closest(lam / q)


def _digits(lat: Lattice, lam: np.ndarray, q: int) -> np.ndarray:
    """b = λ·G⁻¹ mod q (exact in float64: G⁻¹ has entries in ½Z, λ in ½Z)."""
    c = lam @ lat.generator_inverse
    return c - q * np.floor(c / q)


def _code_member(lat: Lattice, lam: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """(in_code, y): y is what the decoder returns for λ's coset; λ is a codeword iff y = λ.

    ``s = max_v ⟨λ, v⟩`` against ``q·‖v‖²/2``: strictly below, λ is inside the Voronoi cell of qΛ
    (y = λ, no computation); otherwise y comes from the decoder's own reduction, so that points
    on the boundary of qV are codewords exactly when the tie rule makes them the coset's
    representative.
    """
    s, _ = max_relevant(lam, lat.name)
    y = lam.copy()
    need = s >= 0.5 * q * lat.relevant_norm_sq
    if np.any(need):
        y[need] = _reduce(lat, _digits(lat, lam[need], q), q)
    return ~np.any(y != lam, axis=-1), y


def _project(x: np.ndarray, lat: Lattice, r: float) -> np.ndarray:
    """Move x into ``{p : max_v ⟨p, v⟩ ≤ r}``: up to PROJECT_STEPS projections on the worst facet."""
    p = x.copy()
    for _ in range(PROJECT_STEPS):
        s, v = max_relevant(p, lat.name)
        c = (s - r) / lat.relevant_norm_sq
        p = np.where((s > r)[:, None], p - c[:, None] * v, p)
    return p


def _code_point(
    z: np.ndarray, x: np.ndarray, uu: np.ndarray, lat: Lattice, q: int, beta: float, search: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codeword for every block at one scale: (y, error ‖z − β(y+u)‖², overload of Q_Λ(x))."""
    lam = lat.closest(x)
    inc, y = _code_member(lat, lam, q)
    over = ~inc
    if search and np.any(over):
        idx = np.nonzero(over)[0]
        zi, ui = z[idx], uu[idx]
        best_e = np.full(idx.size, np.inf)
        best_y = np.zeros((idx.size, 8))  # the origin, always a codeword, if no projection is
        bound = 0.5 * q * lat.relevant_norm_sq
        for t in PROJECT_MARGINS:
            cand = lat.closest(_project(x[idx], lat, bound - t))
            ok, _ = _code_member(lat, cand, q)
            e = _sq8(zi - beta * (cand + ui))
            take = ok & (e < best_e)
            best_e = np.where(take, e, best_e)
            best_y[take] = cand[take]
        y[idx] = best_y
    err = _sq8(z - beta * (y + uu))
    return y, err, over


def code_sizes(q: int | tuple[int, ...] | np.ndarray, k: int) -> np.ndarray:
    """(k,) int64 code sizes: one q for every scale, or the given per-scale list."""
    qs = np.full(k, q, np.int64) if np.ndim(q) == 0 else np.asarray(q, np.int64).reshape(-1)
    if qs.shape != (k,):
        raise ValueError(f"one code size q per scale: got {qs.size} for {k} scales")
    if np.any(qs < 2):
        raise ValueError(f"every code size q must be at least 2, got {qs.tolist()}")
    return qs


def voronoi_encode_blocks(
    z: np.ndarray,
    lat: Lattice | str,
    q: int | tuple[int, ...] | np.ndarray,
    betas: np.ndarray,
    u: np.ndarray | None,
    rule: str = "least-error",
    backend: str = "auto",
    search: bool = True,
) -> VoronoiBlocks:
    """Encode (N, 8) blocks with a Voronoi code of several scales (see the module docstring).

    ``q`` is the code size of every scale, or one per scale (a union code,
    :func:`mmquant.lattices.indexpack.pack_union`). ``u`` is the (N, 8) dither in units of the
    lattice (``None``: no dither). ``search=False`` codes an overloaded block by its wrapped
    point (the plain Voronoi code); ``True`` by the best in-code projection (or the origin).
    ``backend="numba"`` uses :mod:`mmquant.kernels.lattice_block` (bit-identical to this numpy
    reference).
    """
    lat = lattice(lat) if isinstance(lat, str) else lat
    z = np.ascontiguousarray(z, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    qs = code_sizes(q, betas.size)
    uu = np.zeros_like(z) if u is None else np.ascontiguousarray(u, dtype=np.float64)
    if use_numba(backend):
        from mmquant.kernels.lattice_block import voronoi_encode_kernel

        out = voronoi_encode_kernel(
            z,
            lat.name,
            qs,
            betas,
            uu,
            rule == "least-error",
            search,
            generator=lat.generator,
            generator_inverse=lat.generator_inverse,
            relevant_norm_sq=lat.relevant_norm_sq,
            margins=PROJECT_MARGINS,
            steps=PROJECT_STEPS,
        )
        return VoronoiBlocks(*out)
    n = z.shape[0]
    best_err = np.full(n, np.inf)
    chosen = np.full(n, -1, np.int64)
    best_y = np.zeros((n, 8))
    over = np.ones(n, bool)
    for j, beta in enumerate(betas):
        y, err, ov = _code_point(z, z / beta - uu, uu, lat, int(qs[j]), float(beta), search)
        if rule == "least-error":
            take = err < best_err
        else:  # smallest β without overload; the largest β if every β overloads
            take = (chosen < 0) & (~ov | (j == len(betas) - 1))
        best_err = np.where(take, err, best_err)
        chosen[take] = j
        best_y[take] = y[take]
        over[take] = ov[take]
    est = betas[chosen][:, None] * (best_y + uu)
    digits = _digits(lat, best_y, qs[chosen][:, None].astype(np.float64)).astype(np.int64)
    return VoronoiBlocks(digits, chosen, est, over, best_err)


def voronoi_encode_grouped(
    z: np.ndarray,
    lat: Lattice | str,
    q: int,
    betas: np.ndarray,
    u: np.ndarray | None,
    weights: tuple[int, ...],
    group: int,
    budget: int,
    search: bool = True,
    backend: str = "auto",
) -> VoronoiBlocks:
    """Encode (N, 8) blocks choosing the scales of every ``group`` blocks jointly.

    Every block is coded at every scale (as :func:`voronoi_encode_blocks` with one β), then
    :func:`mmquant.lattices.grouping.choose` picks, per group, the scale sequence of least total
    squared error whose total weight is within ``budget``.
    """
    lat = lattice(lat) if isinstance(lat, str) else lat
    z = np.ascontiguousarray(z, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    per = [
        voronoi_encode_blocks(z, lat, q, betas[j : j + 1], u, backend=backend, search=search)
        for j in range(betas.size)
    ]
    a = grouping.choose(np.stack([r.error for r in per], axis=1), weights, group, budget, backend)
    if use_numba(backend):
        from mmquant.kernels.lattice_groups import gather_rows_kernel as pick
    else:

        def pick(a: np.ndarray, arrs: list[np.ndarray]) -> np.ndarray:
            return np.stack(arrs)[a, np.arange(a.size)]

    return VoronoiBlocks(
        pick(a, [r.digits for r in per]),
        a,
        pick(a, [r.estimate for r in per]),
        pick(a, [r.overload for r in per]),
        pick(a, [r.error for r in per]),
    )


def voronoi_decode_blocks(
    digits: np.ndarray,
    beta_index: np.ndarray,
    lat: Lattice | str,
    q: int | tuple[int, ...] | np.ndarray,
    betas: np.ndarray,
    u: np.ndarray | None,
    backend: str = "auto",
) -> np.ndarray:
    """Decode (N, 8) base-q digits and β indices to ``ẑ = β·(y + u)`` (float64, (N, 8)).

    ``q`` is the code size of every scale, or one per scale.
    """
    lat = lattice(lat) if isinstance(lat, str) else lat
    betas = np.asarray(betas, dtype=np.float64)
    qs = code_sizes(q, betas.size)
    n = np.shape(digits)[0]
    if (
        np.ndim(digits) != 2
        or np.shape(digits)[1] != 8
        or np.shape(beta_index) != (n,)
        or (u is not None and np.shape(u) != np.shape(digits))
    ):
        raise ValueError(
            f"digits {np.shape(digits)}, β indices {np.shape(beta_index)} and dither "
            f"{None if u is None else np.shape(u)} must be (N, 8), (N,) and (N, 8)"
        )
    if n and (int(np.min(beta_index)) < 0 or int(np.max(beta_index)) >= betas.size):
        raise ValueError(f"corrupt codes: a β index is not in [0, {betas.size})")
    out = np.empty((n, 8))
    step = chunk_entries(8 * n) // 8
    for b0 in range(0, n, step):  # every block on its own: a chunk at a time
        d = np.ascontiguousarray(digits[b0 : b0 + step], dtype=np.int64)
        bi = np.ascontiguousarray(beta_index[b0 : b0 + step], dtype=np.int64)
        if u is None:
            uu = np.zeros(d.shape)
        else:
            uu = np.ascontiguousarray(u[b0 : b0 + step], dtype=np.float64)
        if use_numba(backend):
            from mmquant.kernels.lattice_block import voronoi_decode_kernel

            out[b0 : b0 + step] = voronoi_decode_kernel(
                d, bi, lat.name, qs, betas, uu, generator=lat.generator
            )
        else:
            y = _reduce(lat, d.astype(np.float64), qs[bi][:, None].astype(np.float64))
            out[b0 : b0 + step] = betas[bi][:, None] * (y + uu)
    return out
