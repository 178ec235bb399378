"""Joint fixed-rate coding of the scale indices of a group of blocks (a weight budget).

A multi-scale code sends, for every block of 8 entries, which of its k scales it used. Sent one by
one this costs ``⌈log2 k⌉`` bits per block although the scales are far from equally used (on
N(0, 1) at q = 14, k = 4 the least-error choices are 38%, 33%, 22% and 7%). Here the indices
``a = (a_1, …, a_G)`` of G consecutive blocks are coded together: scale j has an integer weight
``w_j ≥ 0`` and a group may use any index sequence whose total weight is within the budget W::

    A(G, W) = {a ∈ {0, …, k−1}^G : Σ_b w_{a_b} ≤ W}

The sequence is sent as its rank in lexicographic order among the |A(G, W)| allowed ones, in
``⌈log2 |A(G, W)|⌉`` bits per group: a fixed rate, set by (w, W) and not by the data. The
encoder picks, among the allowed sequences, the one of least total error (exact dynamic
programming over the budget, :func:`choose`); blocks whose best scale is expensive are moved
to a cheaper one only where that costs least. The weights and the budget are part of the
design, chosen by the optimiser (:func:`mmquant.lattices.scales.fit_design`, which calls :func:`fit`
through the grouped index coder of :mod:`mmquant.lattices.indexcoders`).

Counting: ``C(n, r)``, the number of sequences of n indices of total weight ≤ r, obeys
``C(0, r) = 1`` and ``C(n, r) = Σ_j C(n − 1, r − w_j)`` (terms with a negative budget are 0).
The rank of a sequence is ``Σ_b Σ_{j < a_b} C(G − 1 − b, W − used_b − w_j)`` where ``used_b``
is the weight of its first b indices; unranking walks the same sums. All counts must stay below
2^63 so that ranks are exact in ``uint64`` (:data:`MAX_COUNT`).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

from mmquant.kernels import use_numba
from mmquant.packing import pack_wide, packed_wide_nbytes, unpack_wide

__all__ = [
    "MAX_COUNT",
    "count",
    "group_bits",
    "choose",
    "least_error",
    "rank",
    "unrank",
    "pack",
    "unpack",
    "packed_nbytes",
    "GROUP_MAX_SCALES",
    "GROUP_BITS_MAX",
    "WEIGHT_MAX",
    "group_max",
    "fit",
]

#: Largest number of allowed sequences per group (ranks are uint64).
MAX_COUNT = 2**63


@lru_cache(maxsize=256)
def _table(weights: tuple[int, ...], n: int) -> tuple[tuple[int, ...], ...]:
    """C(m, r) for m = 0..n and r = 0..n·max(w) (exact Python integers; constant beyond)."""
    top = n * max(weights)
    rows = [tuple([1] * (top + 1))]
    for _ in range(n):
        prev = rows[-1]
        rows.append(tuple(sum(prev[r - w] for w in weights if r - w >= 0) for r in range(top + 1)))
    return tuple(rows)


def _row(weights: tuple[int, ...], n: int, m: int, budget: int) -> np.ndarray:
    """C(m, r) for r = 0..budget as uint64 (callers keep counts below 2^63)."""
    row = _table(weights, n)[m]
    return np.array([row[min(r, len(row) - 1)] for r in range(budget + 1)], np.uint64)


def count(weights: tuple[int, ...], n: int, budget: int) -> int:
    """Number of index sequences of length ``n`` with total weight ≤ ``budget``."""
    weights = tuple(int(w) for w in weights)
    row = _table(weights, int(n))[n]
    return row[min(int(budget), len(row) - 1)]


def _check(weights: tuple[int, ...], group: int, budget: int) -> None:
    if min(weights) < 0 or budget < 0:
        raise ValueError(f"weights and budget must be non-negative, got {weights}, {budget}")
    if min(weights) > budget:
        raise ValueError(f"budget {budget} admits no index sequence with weights {weights}")
    if count(weights, group, budget) >= MAX_COUNT:
        raise ValueError(
            f"{count(weights, group, budget)} index sequences per group of {group} "
            "exceed 2^63: lower the budget or the group size"
        )


def group_bits(weights: tuple[int, ...], group: int, budget: int, n_blocks: int) -> int:
    """Bits of the packed indices of ``n_blocks`` blocks: ``⌈log2 |A(g, W)|⌉`` per group."""
    weights = tuple(int(w) for w in weights)
    return sum(_bits(weights, g, budget) * m for g, m in _runs(n_blocks, group))


def choose(
    err: np.ndarray, weights: tuple[int, ...], group: int, budget: int, backend: str = "auto"
) -> np.ndarray:
    """Index sequence of least total error in every group, within the budget.

    Parameters
    ----------
    err : numpy.ndarray, shape (N, k)
        Error of every block at every scale (any non-negative unit).
    weights : tuple of int
        Weight of each scale.
    group : int
        Blocks per group (the last group may be shorter).
    budget : int
        Largest total weight of a group.

    Returns
    -------
    numpy.ndarray, shape (N,)
        ``int64`` scale index of every block. Exact minimum by dynamic programming over the
        budget used; ties go to the smaller scale index at the latest block, then to the
        smaller total weight. ``backend="numba"`` gives the same choices from
        :mod:`mmquant.kernels.lattice_groups`.
    """
    weights = tuple(int(w) for w in weights)
    _check(weights, group, budget)
    err = _errors(err, weights)
    n, k = err.shape
    if use_numba(backend):
        from mmquant.kernels.lattice_groups import group_choose_kernel

        return group_choose_kernel(err, weights, group, budget)
    out = np.empty(n, np.int64)
    start = 0
    for g, n_groups in _runs(n, group):
        e = err[start : start + g * n_groups].reshape(n_groups, g, k)
        out[start : start + g * n_groups] = _choose_run(e, weights, budget).reshape(-1)
        start += g * n_groups
    return out


def _errors(err: np.ndarray, weights: tuple[int, ...]) -> np.ndarray:
    err = np.asarray(err, dtype=np.float64)
    if err.ndim != 2 or err.shape[1] != len(weights):
        raise ValueError(
            f"errors must have shape (blocks, {len(weights)}) for {len(weights)} weights, "
            f"got {err.shape}"
        )
    return err


def _runs(n: int, group: int) -> list[tuple[int, int]]:
    """(group length, number of groups): the full groups, then the remainder."""
    runs = [(group, n // group)] if n >= group else []
    if n % group:
        runs.append((n % group, 1))
    return runs


def _forward(
    e: np.ndarray, weights: tuple[int, ...], budget: int, keep: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Least error of every group per total weight used, (groups, budget + 1); and the choices."""
    n_groups, g, k = e.shape
    f = np.full((n_groups, budget + 1), np.inf)
    f[:, 0] = 0.0
    pick = np.empty((g, n_groups, budget + 1), np.int8 if k <= 127 else np.int64) if keep else None
    for b in range(g):
        h = np.full((n_groups, budget + 1), np.inf)
        arg = np.zeros((n_groups, budget + 1), np.int64) if keep else None
        for j, w in enumerate(weights):
            if w > budget:
                continue
            cand = f[:, : budget + 1 - w] + e[:, b, j][:, None]
            better = cand < h[:, w:]
            h[:, w:] = np.where(better, cand, h[:, w:])
            if arg is not None:
                arg[:, w:] = np.where(better, j, arg[:, w:])
        f = h
        if pick is not None:
            pick[b] = arg
    return f, pick


def _choose_run(e: np.ndarray, weights: tuple[int, ...], budget: int) -> np.ndarray:
    """:func:`choose` on (groups, g, k) errors of groups of equal length g."""
    n_groups, g, _ = e.shape
    f, pick = _forward(e, weights, budget, keep=True)
    assert pick is not None
    s = np.argmin(f, axis=1)  # total weight used (the smallest on ties)
    rows = np.arange(n_groups)
    out = np.empty((n_groups, g), np.int64)
    w_arr = np.asarray(weights, np.int64)
    for b in range(g - 1, -1, -1):
        j = pick[b][rows, s].astype(np.int64)
        out[:, b] = j
        s = s - w_arr[j]
    return out


def least_error(
    err: np.ndarray,
    weights: tuple[int, ...],
    group: int,
    budget: int,
    backend: str = "auto",
) -> float:
    """Total error of :func:`choose`'s choice (without computing the choice itself).

    ``backend="numba"`` runs the forward pass in :mod:`mmquant.kernels.lattice_groups` (bit-identical:
    the per-group minima are the same floats, summed here in the same order).
    """
    weights = tuple(int(w) for w in weights)
    _check(weights, group, budget)
    err = _errors(err, weights)
    n, k = err.shape
    if use_numba(backend):
        from mmquant.kernels.lattice_groups import group_minima_kernel

        minima = group_minima_kernel(err, weights, group, budget)
    else:
        parts, start = [], 0
        for g, n_groups in _runs(n, group):
            e = err[start : start + g * n_groups].reshape(n_groups, g, k)
            start += g * n_groups
            parts.append(np.min(_forward(e, weights, budget, keep=False)[0], axis=1))
        minima = np.concatenate(parts) if parts else np.zeros(0)
    total, start = 0.0, 0
    for _, n_groups in _runs(n, group):
        total += float(np.sum(minima[start : start + n_groups]))
        start += n_groups
    return total


def rank(a: np.ndarray, weights: tuple[int, ...], group: int, budget: int) -> np.ndarray:
    """Lexicographic rank of every group's index sequence among the allowed ones.

    ``a`` is the (N,) index sequence (every group within the budget); returns one ``uint64``
    rank per group (the last group may be shorter).
    """
    weights = tuple(int(w) for w in weights)
    _check(weights, group, budget)
    a = np.asarray(a, np.int64)
    w_arr = np.asarray(weights, np.int64)
    out = []
    start = 0
    for g, n_groups in _runs(a.size, group):
        seq = a[start : start + g * n_groups].reshape(n_groups, g)
        start += g * n_groups
        used = np.zeros(n_groups, np.int64)
        r = np.zeros(n_groups, np.uint64)
        for b in range(g):
            row = _row(weights, g, g - 1 - b, budget)
            for j, w in enumerate(weights):
                left = budget - used - w
                add = (seq[:, b] > j) & (left >= 0)
                r = r + np.where(add, row[np.clip(left, 0, budget)], np.uint64(0))
            used = used + w_arr[seq[:, b]]
        if np.any(used > budget):
            raise ValueError(f"an index sequence exceeds the weight budget {budget}")
        out.append(r)
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def unrank(
    ranks: np.ndarray, weights: tuple[int, ...], group: int, budget: int, n_blocks: int
) -> np.ndarray:
    """Inverse of :func:`rank`: the (n_blocks,) ``int64`` index sequence.

    Raises ``ValueError`` if a rank is not below the number of allowed sequences (corrupt data).
    """
    weights = tuple(int(w) for w in weights)
    _check(weights, group, budget)
    ranks = np.asarray(ranks, np.uint64)
    w_arr = np.asarray(weights, np.int64)
    out = np.empty(n_blocks, np.int64)
    start = pos = 0
    for g, n_groups in _runs(n_blocks, group):
        r = ranks[pos : pos + n_groups].copy()
        pos += n_groups
        total = count(weights, g, budget)
        if np.any(r >= np.uint64(total)):
            raise ValueError(
                f"corrupt codes: a group rank is not below {total}, the number of allowed index "
                "sequences"
            )
        used = np.zeros(n_groups, np.int64)
        seq = np.empty((n_groups, g), np.int64)
        for b in range(g):
            row = _row(weights, g, g - 1 - b, budget)
            done = np.zeros(n_groups, bool)
            for j, w in enumerate(weights):
                left = budget - used - w
                c = np.where(left >= 0, row[np.clip(left, 0, budget)], np.uint64(0))
                take = ~done & (r < c)
                seq[take, b] = j
                r = np.where(~done & ~take, r - c, r)
                done |= take
            used = used + w_arr[seq[:, b]]
        out[start : start + g * n_groups] = seq.reshape(-1)
        start += g * n_groups
    return out


def _bits(weights: tuple[int, ...], g: int, budget: int) -> int:
    return math.ceil(math.log2(count(weights, g, budget)))


def pack(
    ranks: np.ndarray, weights: tuple[int, ...], group: int, budget: int, n_blocks: int
) -> np.ndarray:
    """Group ranks of ``n_blocks`` blocks as bytes: ``⌈log2 |A(g, W)|⌉`` bits each.

    The full groups' ranks, then the shorter last group's (:func:`mmquant.packing.pack_wide`).
    """
    weights = tuple(int(w) for w in weights)
    ranks = np.asarray(ranks, np.uint64)
    out, pos = [], 0
    for g, n_groups in _runs(n_blocks, group):
        out.append(pack_wide(ranks[pos : pos + n_groups], _bits(weights, g, budget)))
        pos += n_groups
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def packed_nbytes(weights: tuple[int, ...], group: int, budget: int, n_blocks: int) -> int:
    """Bytes :func:`pack` writes for the group ranks of ``n_blocks`` blocks."""
    weights = tuple(int(w) for w in weights)
    return sum(packed_wide_nbytes(m, _bits(weights, g, budget)) for g, m in _runs(n_blocks, group))


def unpack(
    data: np.ndarray, weights: tuple[int, ...], group: int, budget: int, n_blocks: int
) -> tuple[np.ndarray, int]:
    """Inverse of :func:`pack`: (the uint64 ranks, bytes consumed)."""
    weights = tuple(int(w) for w in weights)
    out, pos = [], 0
    for g, n_groups in _runs(n_blocks, group):
        v, used = unpack_wide(data[pos:], _bits(weights, g, budget), n_groups)
        out.append(v)
        pos += used
    return (np.concatenate(out) if out else np.zeros(0, np.uint64)), pos


# ---------------------------------------------------------------------------------------------
# Limits of a group code, and the fit of its weights and budget (used by the scale optimiser)
# ---------------------------------------------------------------------------------------------
#: Largest number of scales whose indices are coded in groups.
GROUP_MAX_SCALES = 8

#: Groups of G blocks with k scales need ``G·⌈log2 k⌉ ≤ GROUP_BITS_MAX``: beyond it no budget
#: the optimiser tries keeps the count of a group's index sequences below 2^63 (k = 4: G ≤ 32).
GROUP_BITS_MAX = 64

#: Largest weight of a scale in a group's budget.
WEIGHT_MAX = 4


def group_max(k: int) -> int:
    """Largest group of blocks whose scale indices are coded jointly with ``k`` scales."""
    return min(64, GROUP_BITS_MAX // max(1, math.ceil(math.log2(k))))


def _weight_candidates(k: int) -> list[tuple[int, ...]]:
    """Scale weights the optimiser tries: 0 for the smallest scale, non-decreasing, ≤ WEIGHT_MAX."""
    return [
        (0, *t)
        for t in itertools.combinations_with_replacement(range(WEIGHT_MAX + 1), k - 1)
        if t[-1]
    ]


def fit(
    sel: list[tuple[int, int]],
    grids: dict[int, np.ndarray],
    errs: dict[int, np.ndarray],
    group: int,
) -> tuple[list[tuple[int, int]], tuple[int, ...], int]:
    """Weights and budget of a group code, fitted jointly with the scales: (scales, weights, budget).

    Steps (i) and (ii) of :func:`mmquant.lattices.scales.fit_design` for ``group > 1``. ``sel``
    holds the (code size, grid index) of every scale, increasing; ``grids[q]`` the scales of the
    optimiser's grid for code size q and ``errs[q]`` the error of every sample block at each of
    them, shape (grid size, N).
    """
    k = len(sel)
    nb = errs[sel[0][0]].shape[1]

    def merit(sel: list[tuple[int, int]], w: tuple[int, ...], budget: int, m: int = nb) -> float:
        e = np.stack([errs[v][g][:m] for v, g in sel], axis=1)
        bits = group_bits(w, group, budget, m)
        return least_error(e, w, group, budget) / m * 4.0 ** (bits / (8 * m))

    sub = min(nb, max(group, nb // 4 // group * group))  # a quarter of the sample

    def scan(
        sel: list[tuple[int, int]], candidates: list[tuple[int, ...]]
    ) -> list[tuple[float, tuple[int, ...], int]]:
        """Best budget of every weight tuple on the sub-sample, best first."""
        free = np.argmin(np.stack([errs[v][g][:sub] for v, g in sel]), axis=0)  # unconstrained
        found = []
        for w in candidates:
            mean = group * float(np.mean(np.asarray(w)[free]))
            top = min(group * max(w) - 1, math.ceil(1.05 * mean))
            best_w: tuple[float, int] = (np.inf, 0)
            for budget in range(int(0.7 * mean), top + 1):
                if count(w, group, budget) >= MAX_COUNT:
                    break
                best_w = min(best_w, (merit(sel, w, budget, sub), budget))
            if best_w[0] < np.inf:
                found.append((best_w[0], w, best_w[1]))
        return sorted(found)

    def refine(
        sel: list[tuple[int, int]], found: list[tuple[float, tuple[int, ...], int]]
    ) -> tuple[float, tuple[int, ...], int]:
        """The best of ``found`` on the whole sample, budgets within ±2."""
        best: tuple[float, tuple[int, ...], int] = (np.inf, (), 0)
        for _, w, b0 in found:
            for budget in range(max(0, b0 - 2), min(group * max(w) - 1, b0 + 2) + 1):
                if count(w, group, budget) < MAX_COUNT:
                    m = merit(sel, w, budget)
                    if m < best[0] - 1e-15:
                        best = (m, w, budget)
        return best

    found = scan(sel, _weight_candidates(k))
    if not found:
        raise ValueError(
            f"no weight budget gives groups of {group} blocks with {k} scales fewer than 2^63 "
            "index sequences: use a smaller group"
        )
    best, w, budget = refine(sel, found[:3])
    # (i') all scales moved together: the budget trades against the scales along a valley
    top3 = [t[1] for t in found[:3]]
    base = list(sel)
    for shift in range(-8, 9):
        trial = [(v, g + shift) for v, g in base]
        if shift == 0 or not all(0 <= g < grids[v].size for v, g in trial):
            continue
        m, w2, b2 = refine(trial, scan(trial, top3)[:1])
        if m < best - 1e-15:
            best, sel, w, budget = m, trial, w2, b2
    for _ in range(3):
        before = (list(sel), w, budget)
        for i in range(k):  # coordinate descent of the scales, kept in increasing order
            v, g0 = sel[i]
            lo = grids[v][sel[i - 1][1]] if i > 0 else -np.inf
            hi = grids[v][sel[i + 1][1]] if i < k - 1 else np.inf
            for g in range(max(0, g0 - 8), min(grids[v].size, g0 + 9)):
                if not lo < grids[v][g] < hi:
                    continue
                trial = [*sel[:i], (v, g), *sel[i + 1 :]]
                m = merit(trial, w, budget)
                if m < best - 1e-15:
                    best, sel = m, trial
        best, w, budget = refine(sel, scan(sel, _weight_candidates(k))[:3])
        if (sel, w, budget) == before:
            break
    return sel, w, budget
