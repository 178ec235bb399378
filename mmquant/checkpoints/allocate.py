"""Bit allocation: one quantizer per tensor, least total error at a given average rate (exact).

Tensor ``i`` (``n_i`` parameters) quantized by candidate ``j`` costs ``c_ij`` stored bits (measured:
8 × the bytes of its encoding) and leaves the error ``e_ij = n_i·ε_ij``, where ``ε_ij`` is the
relative MSE, or the Σ_X-weighted relative error when the audit was calibrated. The allocation
solves the multiple-choice knapsack

    minimise Σ_i e_{i,j(i)}   subject to   Σ_i c_{i,j(i)} ≤ C = ⌊budget · Σ_i n_i⌋.

1. **Lagrangian on the convex hull.** Each tensor's candidates are reduced to the lower convex
   hull of its (cost, error) points; taking hull segments in order of steepest error decrease per
   bit until the next does not fit gives the LP optimum, the multiplier λ (minus the slope of the
   first segment that does not fit) and the dual bound ``L(λ) = Σ_i min_j (e_ij + λc_ij) − λC``,
   a lower bound on every feasible allocation. The hull points reached (plus any later segments
   that still fit) form a feasible allocation, the incumbent.
2. **Final knapsack step.** Any allocation ``x`` satisfies ``f(x) ≥ L(λ) + Σ_i r_i(x_i)`` with the
   reduced costs ``r_ij = e_ij + λc_ij − min_j(e_ij + λc_ij) ≥ 0``, so only candidates whose
   reduced cost is below the gap ``f(incumbent) − L(λ)`` (usually few) can improve on the
   incumbent. A dynamic programme over the tensors keeps the Pareto front of (bits, error) of the
   partial allocations built from them (allocations that differ by symmetric choices merge),
   pruned by that bound and by the capacity; its best complete allocation is the optimum
   (``exact``, up to a relative 1e-12 in the error sums). Should a front exceed
   :data:`MAX_STATES` states, the most promising are kept, ``exact`` is False, and
   ``lower_bound`` says how far from the optimum the result can be at most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mmquant.checkpoints.audit import AuditResult, AuditRow

__all__ = ["MAX_STATES", "Allocation", "allocate", "solve_mckp"]

#: Most partial allocations kept per step of the final knapsack step.
MAX_STATES = 200_000


@dataclass(frozen=True)
class Allocation:
    """A bit allocation and how it compares with the best single quantizer.

    Attributes
    ----------
    budget : float
        Target average bits per parameter.
    specs : dict of str to str
        Chosen spec per tensor.
    bits_per_param : float
        Achieved average (measured stored bits / parameters).
    error : float
        Parameter-weighted mean error ``Σ n_i ε_i / Σ n_i`` of the plan.
    lower_bound : float
        Lagrangian lower bound on that error over all allocations within the budget.
    exact : bool
        The final knapsack step finished: ``error`` is the optimum.
    weighted : bool
        Errors are Σ_X-weighted (calibrated audit) rather than relative MSEs.
    best_single, best_single_bits, best_single_error
        The single candidate with the least error among those within the budget on every tensor
        (empty / NaN if none fits).
    saved : float
        ``1 − error / best_single_error`` (fraction of the error removed by the allocation).
    """

    budget: float
    specs: dict[str, str]
    bits_per_param: float
    error: float
    lower_bound: float
    exact: bool
    weighted: bool
    best_single: str
    best_single_bits: float
    best_single_error: float
    saved: float

    @property
    def saved_db(self) -> float:
        """The reduction of the error in dB (``10·log10(best_single_error / error)``)."""
        if not (self.error > 0 and self.best_single_error > 0):
            return math.nan
        return 10.0 * math.log10(self.best_single_error / self.error)

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form (with ``saved_db``)."""
        return {**asdict(self), "saved_db": self.saved_db}


def _hull(points: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """Lower-left convex hull of (cost, error, index) points, by increasing cost."""
    pts = sorted(points, key=lambda p: (p[0], p[1], p[2]))
    pareto: list[tuple[int, float, int]] = []
    for p in pts:
        if not pareto or p[1] < pareto[-1][1]:
            if pareto and p[0] == pareto[-1][0]:
                pareto[-1] = p
            else:
                pareto.append(p)
    hull: list[tuple[int, float, int]] = []
    for p in pareto:
        while len(hull) >= 2:
            (c0, e0, _), (c1, e1, _) = hull[-2], hull[-1]
            # drop hull[-1] if it lies on or above the segment hull[-2] -> p
            if (e1 - e0) * (p[0] - c0) >= (p[1] - e0) * (c1 - c0):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def solve_mckp(
    costs: Sequence[Sequence[int]],
    errors: Sequence[Sequence[float]],
    capacity: int,
    max_states: int = MAX_STATES,
) -> tuple[list[int], float, float, bool]:
    """Exact multiple-choice knapsack: one option per group, least error within ``capacity``.

    Parameters
    ----------
    costs : sequence of sequence of int
        ``costs[i][j]``: cost of option ``j`` of group ``i`` (non-negative integers).
    errors : sequence of sequence of float
        ``errors[i][j]``: its error (finite).
    capacity : int
        Largest total cost.
    max_states : int
        Largest Pareto front kept by the final step (beyond it optimality is not proven).

    Returns
    -------
    choice, value, bound, exact
        Option per group, its total error, the Lagrangian lower bound, and whether ``value`` is
        proven optimal.

    Raises
    ------
    ValueError
        Even the cheapest option of every group exceeds ``capacity``.
    """
    groups = len(costs)
    cheapest = sum(min(c) for c in costs)
    if cheapest > capacity:
        raise ValueError(f"cheapest choice costs {cheapest}, above the capacity {capacity}")
    hulls = [
        _hull([(c, e, j) for j, (c, e) in enumerate(zip(cs, es))]) for cs, es in zip(costs, errors)
    ]
    pos = [0] * groups
    used = sum(h[0][0] for h in hulls)
    segs = []
    for i, h in enumerate(hulls):
        for k in range(len(h) - 1):
            slope = (h[k + 1][1] - h[k][1]) / (h[k + 1][0] - h[k][0])
            segs.append((slope, i, k))
    segs.sort()
    lam = 0.0
    blocked: set[int] = set()
    for slope, i, k in segs:
        if i in blocked or pos[i] != k:
            continue
        dc = hulls[i][k + 1][0] - hulls[i][k][0]
        if used + dc <= capacity:
            used += dc
            pos[i] = k + 1
        else:
            if not blocked:
                lam = -slope  # the LP's critical segment
            blocked.add(i)
    choice = [hulls[i][pos[i]][2] for i in range(groups)]
    value = math.fsum(errors[i][choice[i]] for i in range(groups))
    mins = [min(e + lam * c for c, e in zip(cs, es)) for cs, es in zip(costs, errors)]
    bound = math.fsum(mins) - lam * capacity
    if not blocked:
        return choice, value, value, True  # every tensor at its least error: optimal
    tol = 1e-12 * max(abs(value), 1e-300)
    # options of each group whose reduced cost can still matter, sorted by reduced cost
    opts = []
    for i in range(groups):
        red = [(errors[i][j] + lam * costs[i][j] - mins[i], j) for j in range(len(costs[i]))]
        opts.append(sorted(r for r in red if r[0] < value - bound + tol))
    order = sorted(range(groups), key=lambda i: len(opts[i]))
    min_cost_after = [0] * (groups + 1)
    for d in range(groups - 1, -1, -1):
        g = order[d]
        min_cost_after[d] = min_cost_after[d + 1] + min(costs[g][j] for _, j in opts[g])
    # dynamic programme over the groups: the Pareto front of (cost, error) partial allocations
    # (allocations that differ only by symmetric choices merge), pruned by the reduced-cost bound
    states: list[tuple[int, float, float, Any]] = [(0, 0.0, 0.0, None)]
    exact = True
    for d, g in enumerate(order):
        grown = []
        for cost, err, red, node in states:
            for r, j in opts[g]:
                if bound + red + r >= value - tol:
                    break  # sorted by r: the later options cannot improve either
                c = cost + costs[g][j]
                if c + min_cost_after[d + 1] <= capacity:
                    grown.append((c, err + errors[g][j], red + r, (g, j, node)))
        grown.sort(key=lambda s: (s[0], s[1]))
        states = []
        least = math.inf
        for s in grown:
            if s[1] < least - tol:  # not dominated by a cheaper (or equal-cost) state
                states.append(s)
                least = s[1]
        if len(states) > max_states:
            exact = False
            states = sorted(states, key=lambda s: s[2])[:max_states]
        if not states:
            break
    if states:
        _, err, _, node = min(states, key=lambda s: s[1])
        if err < value - tol:
            best = list(choice)
            while node is not None:
                g, j, node = node
                best[g] = j
            choice, value = best, math.fsum(errors[i][best[i]] for i in range(groups))
    return choice, value, bound, exact


def _error_of(row: AuditRow, weighted: bool) -> float:
    return row.weighted_error if weighted else row.relative_mse


def allocate(result: AuditResult, budget: float, max_states: int = MAX_STATES) -> Allocation:
    """Choose one audited candidate per tensor: least total error at ≤ ``budget`` bits/parameter.

    Parameters
    ----------
    result : AuditResult
        The measured candidates (failed ones are skipped).
    budget : float
        Average stored bits per parameter over the audited tensors.

    Raises
    ------
    ValueError
        A budget that is not a positive number, a tensor without any measured candidate, or a
        budget below the cheapest candidates (the message gives the least reachable average).
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ValueError(f"budget must be a positive number of bits per parameter, got {budget!r}")
    if not math.isfinite(budget):
        raise ValueError("budget must be finite")
    weighted = result.calibrated
    by_tensor: dict[str, list[AuditRow]] = {t: [] for t in result.tensors}
    for r in result.rows:
        if not r.failed and math.isfinite(_error_of(r, weighted)):
            by_tensor[r.tensor].append(r)
    empty = [t for t, rs in by_tensor.items() if not rs]
    if empty:
        raise ValueError(f"no candidate could quantize tensor {empty[0]!r}")
    tensors = list(by_tensor)
    params = {t: by_tensor[t][0].params for t in tensors}
    total = sum(params.values())
    capacity = math.floor(budget * total)
    costs = [[8 * r.nbytes for r in by_tensor[t]] for t in tensors]
    errors = [[params[t] * _error_of(r, weighted) for r in by_tensor[t]] for t in tensors]
    cheapest = sum(min(c) for c in costs)
    if cheapest > capacity:
        raise ValueError(
            f"budget {budget:g} bits/parameter is below the cheapest candidates: the least "
            f"average the audited quantizers reach is {cheapest / total:.4f} bits/parameter"
        )
    choice, value, bound, exact = solve_mckp(costs, errors, capacity, max_states)
    specs = {t: by_tensor[t][j].spec for t, j in zip(tensors, choice)}
    bits = sum(costs[i][j] for i, j in enumerate(choice)) / total
    best_spec, best_bits, best_err = "", math.nan, math.nan
    for spec in result.specs:
        rows = [next((r for r in by_tensor[t] if r.spec == spec), None) for t in tensors]
        if any(r is None for r in rows):
            continue
        c = sum(8 * r.nbytes for r in rows)  # type: ignore[union-attr]
        e = math.fsum(params[r.tensor] * _error_of(r, weighted) for r in rows)  # type: ignore[union-attr]
        if c <= capacity and not e >= best_err * total:
            best_spec, best_bits, best_err = spec, c / total, e / total
    error = value / total
    saved = 1.0 - error / best_err if best_err > 0 else math.nan
    return Allocation(
        budget=float(budget),
        specs=specs,
        bits_per_param=bits,
        error=error,
        lower_bound=min(bound / total, error),
        exact=exact,
        weighted=weighted,
        best_single=best_spec,
        best_single_bits=best_bits,
        best_single_error=best_err,
        saved=saved,
    )
