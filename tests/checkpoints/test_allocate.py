"""Tests of mmquant/checkpoints/allocate.py: exact against brute force, budgets, best single."""

import itertools
import math

import numpy as np
import pytest

from mmquant.checkpoints.allocate import allocate, solve_mckp
from mmquant.checkpoints.audit import AuditResult, AuditRow


def _brute(costs, errors, cap):
    best = math.inf
    for ch in itertools.product(*(range(len(c)) for c in costs)):
        if sum(costs[i][j] for i, j in enumerate(ch)) <= cap:
            best = min(best, sum(errors[i][j] for i, j in enumerate(ch)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        g, k = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        costs = [list(map(int, rng.integers(1, 30, size=k))) for _ in range(g)]
        errors = [list(rng.random(k)) for _ in range(g)]
        cap = sum(min(c) for c in costs) + int(rng.integers(0, 40))
        choice, value, bound, exact = solve_mckp(costs, errors, cap)
        best = _brute(costs, errors, cap)
        assert exact and value == pytest.approx(best, abs=1e-12)
        assert bound <= best + 1e-12
        assert sum(costs[i][j] for i, j in enumerate(choice)) <= cap
        assert value == pytest.approx(sum(errors[i][j] for i, j in enumerate(choice)))


def test_many_identical_tensors_stay_exact_and_fast():
    # 200 copies of the same tensor: the symmetric choices merge in the Pareto front
    costs = [[300, 450, 600, 850]] * 200
    errors = [[0.05, 0.01, 0.0009, 3e-5]] * 200
    cap = 200 * 500
    choice, value, bound, exact = solve_mckp(costs, errors, cap)
    assert exact and bound <= value
    # optimum: as many 600s as fit with the rest at 450 → 100·(450) + 100·(600) − ... check by LP
    assert sum(costs[i][j] for i, j in enumerate(choice)) <= cap
    n600 = sum(1 for j in choice if j == 2)
    assert value == pytest.approx(n600 * 0.0009 + (200 - n600) * 0.01, rel=1e-12)


def _result(table):
    rows = []
    for tensor, params, cands in table:
        for spec, bits, err in cands:
            rows.append(
                AuditRow(
                    tensor,
                    spec,
                    (params,),
                    params,
                    int(bits * params / 8),
                    bits,
                    err,
                    -10 * math.log10(err),
                    0.0,
                    0.0,
                )
            )
    specs = tuple(dict.fromkeys(r.spec for r in rows))
    return AuditResult("x", specs, tuple(t for t, _, _ in table), (), tuple(rows), False)


def test_allocate_budget_and_best_single():
    res = _result(
        [
            ("a", 64, [("lo", 3.0, 0.05), ("mid", 4.5, 0.009), ("hi", 8.5, 3e-5)]),
            ("b", 256, [("lo", 3.0, 0.04), ("mid", 4.5, 0.008), ("hi", 8.5, 2e-5)]),
        ]
    )
    a = allocate(res, 4.5)
    assert a.specs == {"a": "mid", "b": "mid"} and a.exact and a.saved == 0
    a = allocate(res, 5.35)  # "hi" on the small tensor fits: 64·8.5 + 256·4.5 = 1696 ≤ 5.35·320
    assert a.specs == {"a": "hi", "b": "mid"} and a.bits_per_param <= 5.35
    assert a.best_single == "mid" and a.saved > 0 and a.saved_db > 0
    assert allocate(res, 100).specs == {"a": "hi", "b": "hi"}
    with pytest.raises(ValueError, match=r"below the cheapest candidates.*3\.0000"):
        allocate(res, 2.5)
    for bad in (0, -1, float("nan"), True, "4"):
        with pytest.raises(ValueError, match="budget"):
            allocate(res, bad)
