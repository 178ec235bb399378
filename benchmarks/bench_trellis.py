"""Trellis-coded quantization (issue 16): the L × k table of gaps and speeds, and decode speed.

For every L and k: the product-error gap to Γ(R) on a Gaussian pair (n × cols, both sides coded,
rate measured) and the encode speed of ``tcq:bits=k,L=L`` (k entries/s); then decode speed in
M entries/s and as a ratio to the float32 memcpy rate, and the same for ``tcqec``. Targets
(issue 16): encode ≥ 1 M entries/s at L = 12 and ≥ 50 k entries/s at L = 16, decode ≥ 200 M
entries/s; the numbers depend on the load of the machine.

    python benchmarks/bench_trellis.py [--ls 8,10,12,14,16] [--bits 2,3,4,5] [--cols 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import best_time, machine, memcpy_rate
from mmquant.experiments.trellis import trellis_rows


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ls", default="8,10,12,14,16")
    ap.add_argument("--bits", default="2,3,4,5")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--extra", default="tcq:bits=2,L=16,V=2;tcqec:rate=2;tcqec:rate=3;tcqec:rate=4")
    args = ap.parse_args(argv)
    print(machine())
    specs = [f"tcq:bits={k},L={L}" for k in _ints(args.bits) for L in _ints(args.ls) if L > k]
    specs += [s for s in args.extra.split(";") if s]
    print(f"{'spec':28s} {'rate':>7s} {'gap dB':>7s} {'enc k/s':>9s}")
    for row in trellis_rows(specs, n=args.n, cols=args.cols):
        print(f"{row[0]:28s} {row[3]:7.3f} {row[4]:7.3f} {row[5]:9.1f}")
    x = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)
    mc = memcpy_rate(x)
    print(f"decode of 1024x4096, memcpy {mc / 1e6:.0f} M entries/s")
    for spec in ("tcq:bits=2,L=12", "tcq:bits=4,L=16,V=2", "tcqec:rate=4"):
        q = mq.get(spec)
        enc = q.encode(x[:64])
        q.decode(enc)
        big = q.encode(x[:256])
        td = best_time(lambda q=q, e=big: q.decode(e), 3)
        rd = big.entries / td
        print(f"{spec:28s} decode {rd / 1e6:8.1f} M/s {100 * rd / mc:6.1f}% of memcpy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
