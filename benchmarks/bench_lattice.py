"""Speed of the lattice kernels: E8 closest point, Voronoi encode (4 β, least error) and decode.

Also the encoder with the scale indices of 32 blocks coded jointly (``group=32``: every block at
every scale, then the budget-constrained choice) and that choice on its own.

Prints millions of entries per second and the ratio to a float32 memcpy of the same number of
entries (numba kernels, parallel over the machine's cores; the numpy reference for comparison).
Each figure is the best of 7 timed calls after a warm-up, with glibc told to keep freed memory
(:func:`common.keep_freed_memory`), so that the output arrays of one call are reused by the next
instead of being faulted in afresh: on a shared virtual machine those page faults can cost more
than the kernels and vary several-fold between runs.

    python benchmarks/bench_lattice.py [--entries 4194304]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from common import best_time, keep_freed_memory, machine, memcpy_rate

from mmquant.lattices import grouping
from mmquant.lattices.blockcode import (
    voronoi_decode_blocks,
    voronoi_encode_blocks,
    voronoi_encode_grouped,
)
from mmquant.lattices.closest import closest_e8, lattice
from mmquant.lattices.scales import optimal_design


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1 << 22)
    args = ap.parse_args(argv)
    kept = keep_freed_memory()
    import numba

    from mmquant.kernels.lattice_closest import closest_kernel

    n = args.entries // 8 * 8
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n // 8, 8))
    u = np.zeros_like(z)
    lat = lattice("e8")
    betas = np.array(optimal_design("e8", 14, 4).betas)
    mem = memcpy_rate(z.astype(np.float32).reshape(-1))
    enc = voronoi_encode_blocks(z, lat, 14, betas, u, backend="numba")
    g = optimal_design("e8", 14, 4, "least-error", False, True, False, 32)
    gb = np.array(g.betas)
    err = np.random.default_rng(1).random((n // 8, 4))
    rows = [
        ("E8 closest point (numba)", lambda: closest_kernel(z)),
        ("E8 closest point (numpy)", lambda: closest_e8(z)),
        (
            "Voronoi encode q=14, 4β (numba)",
            lambda: voronoi_encode_blocks(z, lat, 14, betas, u, backend="numba"),
        ),
        (
            "  the same without projection search",
            lambda: voronoi_encode_blocks(z, lat, 14, betas, u, backend="numba", search=False),
        ),
        (
            "Voronoi encode q=14, 4β, groups of 32",
            lambda: voronoi_encode_grouped(z, lat, 14, gb, u, g.weights, 32, g.budget),
        ),
        (
            "  its group choice alone (numba)",
            lambda: grouping.choose(err, g.weights, 32, g.budget, backend="numba"),
        ),
        (
            "  its group choice alone (numpy)",
            lambda: grouping.choose(err, g.weights, 32, g.budget, backend="numpy"),
        ),
        (
            "Voronoi decode q=14 (numba)",
            lambda: voronoi_decode_blocks(enc.digits, enc.beta_index, lat, 14, betas, u, "numba"),
        ),
        (
            "Voronoi decode q=14 (numpy)",
            lambda: voronoi_decode_blocks(enc.digits, enc.beta_index, lat, 14, betas, u, "numpy"),
        ),
    ]
    print(machine())
    print(f"numba {numba.__version__}, threads {numba.get_num_threads()}, {n} entries")
    print(f"freed memory kept for reuse (glibc mallopt): {'yes' if kept else 'no'}")
    print(f"float32 memcpy: {mem / 1e6:.0f} M entries/s")
    print(f"{'kernel':36s} {'M entries/s':>12s} {'/memcpy':>9s}")
    for name, fn in rows:
        rate = n / best_time(fn, repeat=7)
        print(f"{name:36s} {rate / 1e6:12.1f} {rate / mem:9.4f}")


if __name__ == "__main__":
    main()
