"""Train the lookup-table codes of the bitshift trellis (mmquant/trellis/lut.json).

Alternating optimisation on N(0, 1) sequences: Viterbi-encode them with the current table
(tail-biting, :func:`mmquant.trellis.quantizer.encode_rows`), then replace every table entry by the
mean of the data vectors coded by the states that read it (entries nobody reads keep their value).
The start is the 1MAD code's values at the entries' first states. Deterministic (fixed seed; the
numba kernels and the numpy reference give the same paths), so ``tests/trellis/test_lut.py`` can
retrain a table and compare.

Usage::

    python tools/train_trellis_lut.py            # writes mmquant/trellis/lut.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mmquant.trellis.codes import code_table, lut_index
from mmquant.trellis.quantizer import encode_rows

OUT = Path(__file__).resolve().parents[1] / "mmquant" / "trellis" / "lut.json"
#: Training setup (recorded in the file).
SETUP = {"Q": 8, "L": 10, "rows": 16, "length": 1024, "iterations": 12, "seed": 2024}
CONFIGS = [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (1, 2), (2, 2), (3, 2), (4, 2)]


def train(k: int, V: int, setup: dict[str, int] = SETUP) -> np.ndarray:
    """The trained table (float32 (2^Q, V)) for k bits per entry and V entries per step."""
    q, L = setup["Q"], setup["L"]
    rng = np.random.default_rng([setup["seed"], k, V])
    z = rng.standard_normal((setup["rows"], setup["length"])).astype(np.float32)
    idx = lut_index(L, q)
    start = code_table("1mad", L, V)  # (V, 2^L): entry e starts at the value of its first state
    first = np.full(1 << q, -1, np.int64)
    for s in range((1 << L) - 1, -1, -1):
        first[idx[s]] = s
    table = np.where(first[:, None] >= 0, start.T[np.maximum(first, 0)], 0.0).astype(np.float32)
    kv = k * V
    for _ in range(setup["iterations"]):
        full = np.ascontiguousarray(table[idx].T)
        u = encode_rows(z, full, L, kv)
        R, S = u.shape
        s = np.zeros((R, S), np.int64)
        for i in range(-(-L // kv)):
            s |= np.roll(u, i, axis=1).astype(np.int64) << (i * kv)
        s &= (1 << L) - 1
        e = idx[s].reshape(-1)
        x = z.reshape(R * S, V).astype(np.float64)
        cnt = np.bincount(e, minlength=1 << q)
        new = table.astype(np.float64)
        for v in range(V):
            tot = np.bincount(e, weights=x[:, v], minlength=1 << q)
            new[:, v] = np.where(cnt > 0, tot / np.maximum(cnt, 1), new[:, v])
        table = new.astype(np.float32)
    return table


def main() -> None:
    tables = {}
    for k, V in CONFIGS:
        tables[f"k{k}_V{V}"] = [float(v) for v in train(k, V).reshape(-1)]
        print(f"trained k={k}, V={V}", file=sys.stderr)
    data = {"training": dict(SETUP, configs=[list(c) for c in CONFIGS]), "tables": tables}
    OUT.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
