"""Products straight from the codes against numpy float32 GEMV/GEMM (issue 19's targets).

For each weight shape ``out×in`` (default 4096×4096, 4096×11008 and 11008×4096, N(0, 1) float32)
and each family, the record's product with ``b`` float32 activations
(:func:`mmquant.products.times`; ``b`` = 1 and 16) is timed against numpy's float32 ``W @ x`` in
the same run, and the codes' achieved bandwidth (stored bytes of the record / time) is printed
beside the float32 memcpy bandwidth (``np.copyto`` of the weight matrix, measured again for every
family: the load of a shared machine changes). ``W4A4`` rows time codes × codes
(:func:`mmquant.products.product`: an int4 weight record times an int4 activation record, the
activations read as integers: exact integer group sums). The ``goal`` column is the issue's
target for the row: 4-bit block codes ≥ 3× float32 at b = 1 and ≥ 1.5× at b = 16; 8-bit codes
≥ 1×; ``e8:group=32`` ≥ 1× at b = 1; W4A4 ≥ 2× at b = 1. Best of ``--repeat`` calls after a
warm-up, the product and numpy's float32 called in turn (kernel compilation, the record's check
and the row-tiled copy of the codes are not timed: they are made once per weight).

``--threads 1,2`` runs the whole table once per thread count, each in a fresh process with
``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` set (numpy's BLAS and the
kernels get the same number of threads; a parallel region waits for its slowest thread, so on a
busy machine compare one thread with one thread).

Both thread pools wait passively when idle: importing mmquant makes OpenMP's (the kernels') do
so (:mod:`mmquant.kernels`), and this script sets ``OPENBLAS_THREAD_TIMEOUT=4`` for numpy's
OpenBLAS before numpy is imported, unless the variable is set or ``--blas-spin`` is given. By
default an OpenBLAS worker busy-waits for about 2^28 cycles after each call, and with products
and float32 calls in turn it never stops: on 2 cores it holds the second core, the kernels' second
thread gets a share of it, and a parallel product runs at about its one-thread speed against a
two-thread float32 one (2026-12-03, 4096², two threads, spinning / sleeping OpenBLAS: int4 batch
1 2.87–4.00× / 2.99–3.71×, batch 16 1.12–1.76× / 1.89–2.22×, W4A4 batch 1 1.66–2.28× /
2.27–2.55×). A program that alternates numpy BLAS calls with products from the codes on few cores
gains from the same setting.

    python benchmarks/bench_matmul.py [--shapes 4096x4096,4096x11008,11008x4096]
        [--batches 1,16] [--threads 1,2] [--specs int:bits=4 mxfp4 ...] [--repeat 5] [--numpy]
        [--blas-spin]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--blas-spin" not in sys.argv:  # before numpy loads OpenBLAS (module docstring)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import keep_freed_memory, machine, memcpy_rate
from mmquant.kernels import resolve
from mmquant.products import product, times

SPECS = [
    "int:bits=4",
    "fp:fmt=e2m1",
    "int:bits=4,affine=true",
    "int:bits=8",
    "fp:fmt=e4m3",
    "fp:fmt=e5m2",
    "mxfp4",
    "mxfp6",
    "mxfp8",
    "mxfp8:elem=e5m2",
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


def goal(spec: str, b: int) -> float:
    """The issue's target ratio to float32 for a row (0: none)."""
    if spec == "W4A4":
        return 2.0 if b == 1 else 0.0
    if spec.startswith(("e8", "d4", "zn")):
        return 1.0 if b == 1 else 0.0
    q = mq.get(spec)
    bf = q.block_format() if hasattr(q, "block_format") else None
    bits = getattr(bf, "bits", None) if bf is not None else None
    if bits == 4:
        return 3.0 if b == 1 else 1.5
    if bits is not None and bits >= 6:
        return 1.0
    return 0.0


def children(args: argparse.Namespace, threads: list[int]) -> None:
    """Run the table once per thread count, each in a process with its thread variables set."""
    for t in threads:
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(t)
        env["NUMBA_NUM_THREADS"] = str(t)
        cmd = [sys.executable, __file__, "--threads", str(t), "--shapes", args.shapes]
        cmd += ["--batches", args.batches, "--repeat", str(args.repeat), "--specs", *args.specs]
        cmd += ["--numpy"] if args.numpy else []
        cmd += ["--blas-spin"] if args.blas_spin else []
        subprocess.run(cmd, env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096", help="out×in, …")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", default="", help="thread counts, e.g. 1,2 (default: as set)")
    ap.add_argument("--specs", nargs="+", default=SPECS, help="spec strings (W4A4 included)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numpy", action="store_true", help="force the numpy reference path")
    ap.add_argument(
        "--blas-spin", action="store_true", help="leave OpenBLAS's idle threads busy-waiting"
    )
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t]
    if len(threads) > 1 or (threads and os.environ.get("NUMBA_NUM_THREADS") != str(threads[0])):
        children(args, threads)
        return
    if args.numpy:
        os.environ["MMQUANT_KERNELS"] = "numpy"
    keep_freed_memory()
    batches = [int(b) for b in args.batches.split(",")]
    print(machine())
    simd = ""
    nthreads = os.environ.get("NUMBA_NUM_THREADS", "default")
    if resolve() == "numba":
        import numba

        from mmquant.kernels.products import simd_width

        simd = f", SIMD inner loops in {simd_width() * 32 or 'no'}-bit registers"
        nthreads = str(numba.get_num_threads())
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    idle = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "default (busy-waiting)")
    print(f"backend: {resolve()}{simd}; threads: kernels {nthreads}, BLAS {blas}")
    print(
        f"idle threads: OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}, "
        f"OPENBLAS_THREAD_TIMEOUT {idle}"
    )
    rng = np.random.default_rng(0)
    header = (
        f"{'out×in':>11} {'spec':20} {'thr':>3} {'b':>3} {'ms':>8} {'f32 ms':>8} {'×f32':>6} "
        f"{'goal':>5} {'GB/s':>6} {'memcpy':>6}"
    )
    for shape in args.shapes.split(","):
        m, n = (int(v) for v in shape.split("x"))
        w = rng.standard_normal((m, n)).astype(np.float32)
        print(
            f"\n{m}×{n} float32 weight ({w.nbytes / 1e6:.0f} MB); GB/s: stored bytes of the codes"
        )
        print("per second; memcpy: np.copyto of the float32 weight, bytes read per second")
        print(header)
        for spec in args.specs:
            codes_spec = "int:bits=4" if spec == "W4A4" else spec
            enc = mq.get(codes_spec).encode(w)
            mem = memcpy_rate(w, args.repeat) * 4 / 1e9
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
                g = goal(spec, b)
                gs = f"{g:5.1f}" if g else f"{'':5}"
                print(
                    f"{shape:>11} {spec:20} {nthreads:>3} {b:3d} {t * 1e3:8.2f} {t32 * 1e3:8.2f} "
                    f"{t32 / t:6.2f} {gs} {enc.nbytes / t / 1e9:6.1f} {mem:6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
