"""The one-activation tile kernel alone: hot and after flushing the caches, against numpy's GEMV.

Times :func:`mmquant.kernels.products.block_product` on the row-tiled copy of a record (made
once, not timed; no :func:`mmquant.products.times` overhead), best of ``--repeat`` calls with
warm caches and best of ``--repeat`` calls after streaming 64 MB through the caches, beside
numpy's float32 ``W @ x`` after the same flush. Prints the tile view's bytes per second and the
time per 64-row tile column (the kernels' unit of work: one SIMD lane per row), in ns and in
cycles at ``--ghz``.

    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_gemv_kernel.py
        [--shape 4096x4096] [--specs int:bits=4 nvfp4 ...] [--repeat 200] [--ghz 2.6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import keep_freed_memory, machine
from mmquant.products import reference
from mmquant.products.records import block_view
from mmquant.products.tiles import TILE, tile_view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x4096", help="out×in")
    ap.add_argument("--specs", nargs="+", default=["int:bits=4", "nvfp4", "mxfp4", "int:bits=8"])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--ghz", type=float, default=2.6, help="clock for the cycle figures")
    args = ap.parse_args()
    import mmquant.kernels.products as kp

    keep_freed_memory()
    print(machine(), f"SIMD width {kp.simd_width()} lanes")
    m, n = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((m, n)).astype(np.float32)
    x = rng.standard_normal((1, n)).astype(np.float32)
    junk = np.ones(16 << 20, np.float32)  # 64 MB
    f32 = []
    for _ in range(min(args.repeat, 50)):
        junk += 1
        t0 = time.perf_counter()
        w @ x[0]
        f32.append(time.perf_counter() - t0)
    t32 = min(f32)
    print(f"numpy float32 GEMV {m}×{n}, caches flushed: {t32 * 1e3:.3f} ms")
    cols = -(-m // TILE) * n
    for spec in args.specs:
        v = block_view(mq.get(spec).encode(w))
        tv = tile_view(v)
        u = np.ones((1, v.scale.shape[1]))
        vs = None if v.offset is None else reference.activation_sums(x, v.group)
        kp.block_product(tv, x, u, vs)
        hot, cold = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            kp.block_product(tv, x, u, vs)
            hot.append(time.perf_counter() - t0)
            junk += 1
            t0 = time.perf_counter()
            kp.block_product(tv, x, u, vs)
            cold.append(time.perf_counter() - t0)
        h, c = min(hot), min(cold)
        nb = tv.nbytes
        print(
            f"{spec:24} hot {h * 1e3:.3f} ms, flushed {c * 1e3:.3f} ms ({t32 / c:.2f}× float32); "
            f"{nb / 1e6:.1f} MB at {nb / c / 1e9:.1f} GB/s; per tile column "
            f"{h / cols * 1e9:.2f} ns = {h / cols * args.ghz * 1e9:.2f} cycles (hot)"
        )


if __name__ == "__main__":
    main()
