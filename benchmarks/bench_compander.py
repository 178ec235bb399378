"""Encode/decode speed of the scalar codebook quantizers (compander, Lloyd–Max, uniform).

Prints millions of entries per second for ``q.encode`` (row RMS, cell search, packing) and
``q.decode`` (unpacking, lookup, scaling) on a float32 matrix, and the ratio to the float32 memcpy
rate measured in the same run (target: ≥ 5 %). Uses the numba kernels when numba is installed.

    python benchmarks/bench_compander.py [--rows 4096] [--cols 1024]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import best_time, machine, memcpy_rate

SPECS = [
    "compander:bits=2,rho=0.8",
    "compander:bits=3,rho=0.8",
    "compander:bits=4,rho=0.8",
    "compander:bits=6,rho=0.8",
    "compander:bits=8,rho=0.8",
    "lloydmax:bits=4",
    "uniform:bits=4",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        import mmquant.kernels.compander  # noqa: F401

        path = "numba kernels"
    except ImportError:
        path = "numpy reference"
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    mc = memcpy_rate(x, args.repeat)
    print(machine())
    print(f"{args.rows}x{args.cols} float32, {path}; memcpy {mc / 1e6:.0f} M entries/s")
    print(f"{'spec':28s} {'encode M/s':>11s} {'% memcpy':>9s} {'decode M/s':>11s} {'% memcpy':>9s}")
    worst = 1.0
    for spec in SPECS:
        q = mq.get(spec)
        enc = q.encode(x)  # warm-up (compiles the kernels)
        te = best_time(lambda q=q: q.encode(x), args.repeat)
        td = best_time(lambda q=q, enc=enc: q.decode(enc), args.repeat)
        re, rd = x.size / te, x.size / td
        worst = min(worst, re / mc, rd / mc)
        print(
            f"{spec:28s} {re / 1e6:11.0f} {100 * re / mc:8.1f}% {rd / 1e6:11.0f} {100 * rd / mc:8.1f}%"
        )
    print(f"slowest: {100 * worst:.1f}% of memcpy (target ≥ 5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
