"""Products straight from the codes against numpy float32 GEMV/GEMM (issue 19's targets).

For each weight shape (default 4096×4096 and 4096×11008, N(0, 1) float32) and each family, the
record's product with ``b`` float32 activations (:func:`mmquant.products.times`; ``b`` = 1 and 16)
is timed against numpy's float32 ``W @ x`` in the same run, and the codes' achieved bandwidth
(stored bytes of the record / time) is printed beside the float32 memcpy bandwidth
(``np.copyto`` of the weight matrix). ``W4A4`` rows time codes × codes
(:func:`mmquant.products.product`: an int4 weight record times an int4 activation record, the
activations read as integers: exact integer group sums). Targets: 4-bit block codes ≥ 3× float32 at b = 1 and ≥ 1.5× at b = 16;
``e8:group=32`` ≥ 1× at b = 1; W4A4 ≥ 2× at b = 1. Best of ``--repeat`` calls after a warm-up, the
product and numpy's float32 called in turn (kernel compilation, the record's check and the row-tiled
copy of the codes are not timed: they are made once per weight). On a busy machine, time one
thread against one thread (``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1``): a parallel region
waits for its slowest thread.

    python benchmarks/bench_matmul.py [--shapes 4096x4096,4096x11008] [--batches 1,16]
        [--specs int:bits=4 mxfp4 ...] [--repeat 5] [--numpy]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import keep_freed_memory, machine, memcpy_rate
from mmquant.kernels import resolve
from mmquant.products import product, times

SPECS = [
    "int:bits=4",
    "int:bits=4,affine=true",
    "int:bits=8",
    "fp:fmt=e2m1",
    "fp:fmt=e4m3",
    "mxfp4",
    "mxfp6",
    "mxfp8",
    "mxint8",
    "nvfp4",
    "nf4",
    "lloydmax:bits=4",
    "e8:group=32",
    "W4A4",
]


def paired(fn: Callable[[], object], ref: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best times of ``fn`` and ``ref`` called in turn (both see the same load of the machine)."""
    fn(), ref()
    best, best_ref = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        ref()
        t2 = time.perf_counter()
        best, best_ref = min(best, t1 - t0), min(best_ref, t2 - t1)
    return best, best_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,4096x11008")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--specs", nargs="+", default=SPECS, help="spec strings (W4A4 included)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numpy", action="store_true", help="force the numpy reference path")
    args = ap.parse_args()
    if args.numpy:
        os.environ["MMQUANT_KERNELS"] = "numpy"
    keep_freed_memory()
    batches = [int(b) for b in args.batches.split(",")]
    print(machine())
    simd = ""
    if resolve() == "numba":
        from mmquant.kernels.products import simd_width

        simd = f", 4-bit look-ups in {simd_width() * 32 or 'no'}-bit SIMD registers"
    print(f"backend: {resolve()}{simd}")
    rng = np.random.default_rng(0)
    header = f"{'shape':>11} {'spec':26} {'b':>3} {'ms':>8} {'f32 ms':>8} {'×f32':>6} {'GB/s':>6}"
    for shape in args.shapes.split(","):
        m, n = (int(v) for v in shape.split("x"))
        w = rng.standard_normal((m, n)).astype(np.float32)
        mem = memcpy_rate(w, args.repeat) * 4 / 1e9
        print(f"\n{m}×{n}: float32 memcpy {mem:.1f} GB/s (read + write of {w.nbytes / 1e6:.0f} MB)")
        print(header)
        for spec in args.specs:
            codes_spec = "int:bits=4" if spec == "W4A4" else spec
            enc = mq.get(codes_spec).encode(w)
            for b in batches:
                x = rng.standard_normal((n, b)).astype(np.float32)
                xt = np.ascontiguousarray(x.T)
                if spec == "W4A4":
                    ex = mq.get("int:bits=4").encode(xt)

                    def run(enc=enc, ex=ex):
                        return product(enc, ex)
                else:

                    def run(enc=enc, x=x):
                        return times(enc, x)

                t, t32 = paired(
                    run, lambda w=w, x=x, b=b: w @ (x[:, 0] if b == 1 else x), args.repeat
                )
                print(
                    f"{shape:>11} {spec:26} {b:3d} {t * 1e3:8.2f} {t32 * 1e3:8.2f} "
                    f"{t32 / t:6.2f} {enc.nbytes / t / 1e9:6.1f}"
                )


if __name__ == "__main__":
    main()
