"""Trellis-coded quantization: the gap to Γ(R) against the number of states (issue 16)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmquant.core import get
from mmquant.data import gaussian_pair
from mmquant.experiments.base import ExperimentResult, experiment
from mmquant.experiments.plots import figure
from mmquant.metrics import gap_db, product_error_of

__all__ = ["trellis_gap", "trellis_rows"]

_COLUMNS = ["spec", "L", "bits", "rate", "gap dB", "encode k entries/s", "k entries/CPU s"]


def trellis_rows(
    specs: Sequence[str], n: int = 4096, cols: int = 16, seed: int = 0
) -> list[list[Any]]:
    """One row per spec: the product-error gap to Γ(R) on a Gaussian pair (n × cols, both sides
    coded, rate measured) and the encode speed (after a warm-up encode that compiles): entries per
    second of wall time, and per second of the process's CPU time (all threads: the speed of one
    core, steadier than wall time on a loaded machine)."""
    p = gaussian_pair(n=n, a=cols, b=cols, seed=seed)
    rows = []
    for spec in specs:
        q = get(spec)
        q.encode(p.a.T[:1, :64])
        t0, c0 = time.perf_counter(), time.process_time()
        ea, eb = q.encode(p.a.T), q.encode(p.b.T)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        rep = product_error_of(p.a, p.b, ea, eb)
        rows.append(
            [
                q.spec,
                int(getattr(q, "L", 0)),
                int(getattr(q, "bits", 0)) or float(getattr(q, "rate", 0.0)),
                round(rep.rate, 4),
                round(gap_db(rep.error, rep.rate), 3),
                round((p.a.size + p.b.size) / dt / 1e3, 1),
                round((p.a.size + p.b.size) / max(dc, 1e-9) / 1e3, 1),
            ]
        )
    return rows


def _code(spec: str) -> str:
    for part in spec.split(":", 1)[-1].split(","):
        if part.startswith("code="):
            return part[5:]
    return "1mad"


@experiment("trellis-gap", "tcq: product-error gap to Γ(R) against the number of states 2^L")
def trellis_gap(
    ls: Sequence[int] = (8, 10, 12, 14, 16),
    bits: Sequence[int] = (2, 3, 4),
    n: int = 4096,
    cols: int = 64,
    seed: int = 0,
    codes: Sequence[str] = ("1mad", "strat"),
) -> ExperimentResult:
    """The fixed-rate trellis (V = 1, each code) at every L and k, on a Gaussian pair."""
    specs = [f"tcq:bits={k},L={L},code={c}" for c in codes for k in bits for L in ls if L > k]
    rows = trellis_rows(specs, n=n, cols=cols, seed=seed)
    styles = {c: s for c, s in zip(codes, ("o-", "s--", "^:", "d-."), strict=False)}

    def plot(path: str | Path) -> None:
        with figure(path) as (_fig, ax):
            for c in codes:
                for k in bits:
                    pts = [(r[1], r[4]) for r in rows if r[2] == k and _code(r[0]) == c]
                    ax.plot(
                        [a for a, _ in pts],
                        [b for _, b in pts],
                        styles.get(c, "o-"),
                        label=f"{c}, {k} bits/entry",
                    )
            ax.set_xlabel("L (2^L trellis states)")
            ax.set_ylabel("gap of the product error to Γ(R) [dB]")
            ax.set_title(f"bitshift trellis (tail-biting), Gaussian {n}×{cols} pair")
            ax.grid(alpha=0.3)
            ax.legend()

    return ExperimentResult(
        "trellis-gap",
        f"tcq (codes {', '.join(codes)}; V=1) on a Gaussian pair {n}×{cols} (seed {seed}), both "
        "matrices coded, rate measured; encode speed on this machine (noisy)",
        _COLUMNS,
        rows,
        {"ls": list(ls), "bits": list(bits), "codes": list(codes)},
        plot,
    )
