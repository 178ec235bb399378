"""Cost of the rotation for row lengths without a Hadamard matrix, and of an e8 encode there.

``rotation(n, seed)`` is a :class:`~mmquant.rotations.RandomizedHadamard` when
``n = m·2^k`` (m ∈ {1, 12, 20, 28}) and a :class:`~mmquant.rotations.BlockHadamard` otherwise
(until ROTATION_VERSION 2 it was an n×n Haar matrix: a 2×9000 e8 encode took 46 s and 3.2 GB).
For each n this prints the time of ``apply`` + ``inverse`` on 2 rows, the peak memory of that
(tracemalloc) and the time and peak memory of encoding and decoding a 2×n array with ``e8``.
``--haar`` adds the Haar matrix (kind="orthogonal") for the n up to ``--haar-max``.

    python benchmarks/bench_rotation.py [--n 1000 9000 40000] [--haar] [--haar-max 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from common import machine

import mmquant
from mmquant.rotations import rotation, rotation_scheme


def _measure(fn) -> tuple[float, int]:
    """(seconds, traced peak bytes) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
        return time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 4097, 9000, 40000, 100000])
    ap.add_argument("--haar", action="store_true", help="also the Haar matrix (slow, O(n²))")
    ap.add_argument("--haar-max", type=int, default=1000)
    args = ap.parse_args(argv)
    print(machine())
    q = mmquant.get("e8")
    q.encode(np.ones((1, 256)))  # kernels and the design
    head = f"{'n':>7} {'rotation':>10} {'blocks':>24} {'rot ms':>8} {'rot MiB':>8}"
    print(head + f" {'e8 enc+dec s':>13} {'e8 MiB':>8}")
    for n in args.n:
        x = np.random.default_rng(0).standard_normal((2, n))
        kinds = ["auto"] + (["orthogonal"] if args.haar and n <= args.haar_max else [])
        for kind in kinds:
            r = rotation(n, 1, kind=kind)
            name = rotation_scheme(n, kind)
            blocks = str(getattr(r, "blocks", (n,) if name == "hadamard" else "-"))
            if kind == "orthogonal":
                sec, peak = _measure(lambda r=r, x=x: r.inverse(r.apply(x)))  # the n×n matrix
                print(f"{n:>7} {name:>10} {blocks:>24} {1e3 * sec:>8.1f} {peak / 2**20:>8.1f}")
                continue
            r.apply(x)  # cached signs
            sec, peak = _measure(lambda r=r, x=x: r.inverse(r.apply(x)))
            esec, epeak = _measure(lambda x=x: q.decode(q.encode(x)))
            print(
                f"{n:>7} {name:>10} {blocks[:24]:>24} {1e3 * sec:>8.1f} {peak / 2**20:>8.1f}"
                f" {esec:>13.2f} {epeak / 2**20:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
