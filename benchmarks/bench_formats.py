"""Encode/decode speed of the scalar and block formats (INT, FP, MX, NVFP4, NF4).

Prints millions of entries per second for ``q.encode`` (scales, rounding, packing) and ``q.decode``
(unpacking, lookup, scaling) on a float32 matrix of ``2^size_log2`` N(0, 1) entries, and the ratio
to a float32 memcpy (``np.copyto`` of the same data) measured in the same run (target: ≥ 5 % for
every format, encode and decode). Uses the numba kernels when numba is installed; ``--numpy``
forces the numpy reference path.

    python benchmarks/bench_formats.py [--size-log2 24] [--repeat 3] [--numpy]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import best_time, machine, memcpy_rate

SPECS = [
    "int:bits=2",
    "int:bits=4",
    "int:bits=8",
    "int:bits=4,group=0",
    "int:bits=4,affine=true",
    "fp:fmt=e2m1",
    "fp:fmt=e4m3",
    "mxfp4",
    "mxfp6",
    "mxfp6:elem=e3m2",
    "mxfp8",
    "mxfp8:elem=e5m2",
    "mxint8",
    "nvfp4",
    "nf4",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-log2", type=int, default=24, help="log2 of the number of entries")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (best)")
    ap.add_argument("--numpy", action="store_true", help="force the numpy reference path")
    ap.add_argument("--specs", default=None, help="specs separated by spaces (default: all)")
    args = ap.parse_args(argv)
    if args.numpy:
        os.environ["MMQUANT_KERNELS"] = "numpy"
    from mmquant.formats.integer import kernels

    path = "numba kernels" if kernels() is not None else "numpy reference"
    specs = args.specs.split() if args.specs else SPECS
    rows = 1 << (args.size_log2 // 2)
    cols = 1 << (args.size_log2 - args.size_log2 // 2)
    x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    mc = memcpy_rate(x, max(args.repeat, 3))
    print(machine())
    print(f"{rows}x{cols} float32 N(0,1), {path}; memcpy {mc / 1e6:.0f} M entries/s")
    head = f"{'spec':26s} {'bits':>6s} {'encode M/s':>11s} {'% memcpy':>9s}"
    print(head + f" {'decode M/s':>11s} {'% memcpy':>9s}")
    worst = 1.0
    for spec in specs:
        q = mq.get(spec)
        enc = q.encode(x)  # warm-up (compiles the kernels on first use)
        te = best_time(lambda q=q: q.encode(x), args.repeat)
        td = best_time(lambda q=q, enc=enc: q.decode(enc), args.repeat)
        re, rd = x.size / te, x.size / td
        worst = min(worst, re / mc, rd / mc)
        print(
            f"{spec:26s} {enc.bits_per_entry:6.3f} {re / 1e6:11.0f} {100 * re / mc:8.1f}%"
            f" {rd / 1e6:11.0f} {100 * rd / mc:8.1f}%"
        )
    print(f"slowest: {100 * worst:.1f}% of memcpy (target ≥ 5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
