"""Peak memory of every encoder (and decoder), as a multiple of the input's bytes.

Each quantizer runs in a fresh subprocess on a float32 ``rows × n`` N(0, 1) array. The process
first encodes a small array of the same row length (numba compilation, cached designs and the
rotation's tables are then in place: they are constants, not a multiple of the input), then:

* RSS: the kernel's peak resident set (``VmHWM``) is reset through ``/proc/self/clear_refs``
  (Linux ≥ 4.0) and the encode's high-water mark above the resident set before it is reported.
  This covers every allocation, numba's ``np.empty`` inside ``njit`` included;
* tracemalloc: the peak of the Python allocations traced by :mod:`tracemalloc` (numpy arrays
  report theirs; numba's allocations inside kernels are not traced), over a second encode.

glibc is told to return freed blocks of 64 KiB or more at once (fixed ``mmap``/trim thresholds),
so that memory freed by the warm-up or the encode does not hide the next step's peak.

Figures are ``peak / input.nbytes``; the encoded record itself (a few tenths of the input) is
part of the peak. Where ``clear_refs`` is not available the RSS column shows ``-``.

    python benchmarks/bench_memory.py [--rows 4096] [--n 256] [--specs e8 int ...] [--decode]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

#: The quantizers measured by default: every family's defaults and the configurations of
#: ``mmquant compare`` whose cost differs (grouped scale indices, fitted scales, dither ...).
SPECS = (
    "int",
    "int:group=0",
    "int:group=-1",
    "int:bits=8,affine=true",
    "fp",
    "fp:fmt=e2m1,group=16",
    "nf4",
    "mxfp4",
    "mxfp6",
    "mxfp8",
    "mxint8",
    "nvfp4",
    "compander",
    "lloydmax",
    "uniform",
    "datacompander",
    "datacompander:refine=5",
    "e8",
    "e8:group=32",
    "e8:fit=true",
    "e8:dither=true,center=true",
    "e8:q=14;15;15;13",
    "d4",
    "zn",
    "e8ec",
    "timeshare",
)


def _status(key: str) -> int | None:
    """A ``VmXXX`` field of /proc/self/status in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _release_freed_memory() -> None:
    """Have glibc return freed blocks of 64 KiB or more to the system at once (fixed thresholds).

    Otherwise memory freed by one step stays resident and hides the next step's peak.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            libc = ctypes.CDLL(name)
            libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
        except (OSError, AttributeError):
            pass


def worker(spec: str, rows: int, n: int, decode: bool) -> dict[str, object]:
    """Measure one quantizer in this process (see the module docstring)."""
    import tracemalloc

    _release_freed_memory()

    import numpy as np

    import mmquant

    q = mmquant.get(spec)
    x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
    q.decode(q.encode(x[: min(rows, 8)]))  # warm-up: kernels, designs, rotation tables
    gc.collect()
    rss = None
    if _reset_peak():
        base = _status("VmRSS")
        t0 = time.perf_counter()
        enc = q.encode(x)
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM")
        if base is not None and peak is not None:
            rss = (peak - base) / x.nbytes
    else:
        t0 = time.perf_counter()
        enc = q.encode(x)
        seconds = time.perf_counter() - t0
    dec_rss = None
    if decode and _reset_peak():
        base = _status("VmRSS")
        q.decode(enc)
        peak = _status("VmHWM")
        if base is not None and peak is not None:
            dec_rss = (peak - base) / x.nbytes
    gc.collect()
    dec_traced = None
    if decode:
        tracemalloc.start()
        q.decode(enc)
        dec_traced = tracemalloc.get_traced_memory()[1] / x.nbytes
        tracemalloc.stop()
    del enc
    gc.collect()
    tracemalloc.start()
    enc = q.encode(x)
    traced = tracemalloc.get_traced_memory()[1] / x.nbytes
    tracemalloc.stop()
    return {
        "spec": spec,
        "rss": rss,
        "traced": traced,
        "decode_rss": dec_rss,
        "decode_traced": dec_traced,
        "seconds": seconds,
        "bits": enc.bits_per_entry,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--specs", nargs="*", default=list(SPECS))
    ap.add_argument("--decode", action="store_true", help="also the decoder's peak (RSS)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, args.n, args.decode)))
        return
    from common import machine

    print(machine())
    mb = args.rows * args.n * 4 / 2**20
    print(f"float32 input {args.rows}×{args.n} ({mb:.1f} MiB); peak memory / input bytes")
    head = f"{'spec':<30} {'RSS':>7} {'traced':>7}"
    if args.decode:
        head += f" {'dec RSS':>8} {'traced':>7}"
    print(head + f" {'encode s':>9} {'bits':>7}")
    for spec in args.specs:
        cmd = [sys.executable, __file__, "--worker", spec, "--rows", str(args.rows)]
        cmd += ["--n", str(args.n)] + (["--decode"] if args.decode else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{spec:<30} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])

        def fmt(v: object, w: int) -> str:
            return f"{v:>{w}.2f}" if isinstance(v, float) else f"{'-':>{w}}"

        line = f"{spec:<30} {fmt(r['rss'], 7)} {fmt(r['traced'], 7)}"
        if args.decode:
            line += f" {fmt(r['decode_rss'], 8)} {fmt(r['decode_traced'], 7)}"
        print(line + f" {r['seconds']:>9.2f} {r['bits']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
