"""Train the stratified trellis code's correction (``"tstrat"``, mmquant/trellis/tstrat.json).

The code is ``Φ⁻¹(u) + c(u)`` with ``u`` the stratified position of a state
(:func:`mmquant.trellis.codes.strat_positions`) and ``c`` piecewise linear on ``M = 2^Q`` knots
(:func:`mmquant.trellis.codes.correction`). Alternating optimisation on N(0, 1) sequences, from
``c = 0`` (the stratified code): Viterbi-encode them with the current code (tail-biting,
:func:`mmquant.trellis.quantizer.encode_rows`), then fit the knots by least squares to the coded
entries (the reconstruction is linear in the knots: a tridiagonal system, with a small ridge).
Each half-step lowers the training error. Deterministic (fixed seed; the numba kernels and the
numpy reference give the same paths), so a test can retrain a correction and compare.

Usage::

    nice python tools/train_trellis_strat.py      # writes mmquant/trellis/tstrat.json (minutes)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import ndtri

from mmquant.trellis.codes import strat_positions
from mmquant.trellis.quantizer import encode_rows

OUT = Path(__file__).resolve().parents[1] / "mmquant" / "trellis" / "tstrat.json"
#: Training setup (recorded in the file).
SETUP = {"Q": 6, "L": 12, "rows": 32, "length": 4096, "iterations": 8, "seed": 2026, "ridge": 1e-3}
CONFIGS = [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (1, 2), (2, 2), (3, 2), (4, 2)]


def _weights(u: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
    t = u * M - 0.5
    i = np.clip(np.floor(t).astype(np.int64), 0, M - 2)
    return i, np.clip(t - i, 0.0, 1.0)


def train(k: int, V: int, setup: dict = SETUP) -> np.ndarray:
    """The trained knots (float32 (2^Q,)) for k bits per entry and V entries per step."""
    M, L, kv = 1 << setup["Q"], setup["L"], k * V
    rng = np.random.default_rng([setup["seed"], k, V])
    z = rng.standard_normal((setup["rows"], setup["length"])).astype(np.float32)
    x = z.reshape(-1).astype(np.float64)
    u = strat_positions(L, V, k)
    base = ndtri(u)
    idx, lam = _weights(u, M)
    knots = np.zeros(M)
    for _ in range(setup["iterations"]):
        code = base + (1.0 - lam) * knots[idx] + lam * knots[idx + 1]
        sym = encode_rows(z, code.astype(np.float32), L, kv)
        R, S = sym.shape
        s = np.zeros((R, S), np.int64)
        for j in range(-(-L // kv)):
            s |= np.roll(sym, j, axis=1).astype(np.int64) << (j * kv)
        s = (s & ((1 << L) - 1)).reshape(-1)
        i, c = idx[:, s].T.reshape(-1), lam[:, s].T.reshape(-1)  # entry order: step, then v
        r = x - base[:, s].T.reshape(-1)
        a = 1.0 - c
        A = np.diag(np.bincount(i, a * a, M) + np.bincount(i + 1, c * c, M) + setup["ridge"])
        off = np.bincount(i, a * c, M)[:-1]
        A[np.arange(M - 1), np.arange(1, M)] = off
        A[np.arange(1, M), np.arange(M - 1)] = off
        knots = np.linalg.solve(A, np.bincount(i, a * r, M) + np.bincount(i + 1, c * r, M))
    return knots.astype(np.float32)


def main() -> None:
    knots = {}
    for k, V in CONFIGS:
        knots[f"k{k}_V{V}"] = [float(v) for v in train(k, V)]
        print(f"trained k={k}, V={V}", file=sys.stderr, flush=True)
    data = {"training": dict(SETUP, configs=[list(c) for c in CONFIGS]), "knots": knots}
    OUT.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
