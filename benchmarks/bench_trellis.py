"""Trellis-coded quantization (issue 16): the L × k table of gaps and speeds, and decode speed.

For every code, L and k: the product-error gap to Γ(R) on a Gaussian pair (n × cols, both sides
coded, rate measured) and the encode speed of ``tcq:bits=k,L=L,code=c`` in k entries/s of wall
time and per CPU second (the speed of one core; steadier on a loaded machine, the wall-time speed
of an idle 2-core machine is up to twice it). Then decode speed: the trellis decoder alone (symbols
to reconstruction, :mod:`mmquant.kernels.trellis`, as the lattice benchmark times its decoder) and
the whole ``Quantizer.decode`` (record checks, the fused kernel that reads the packed symbols,
decodes, scales and rotates back each row in float64, and the finiteness check), in M entries/s (best wall time of many calls: the CPU time of the parallel kernels counts
the threads' waiting) and as a ratio to the float32 memcpy rate. Targets (issue 16): encode ≥ 1 M
entries/s at L = 12 and ≥ 50 k entries/s at L = 16, decode ≥ 200 M entries/s; the numbers depend
on the load of the machine. ``--cols 256`` is ``mmquant compare``'s data (slow at L = 16; the
default 64 columns leave about ±0.1 dB of noise on the gaps).

``--mse`` prints instead the MSE gap to D(R) = 2^(−2R) on N(0, 1) rows (16 × 4096 entries): the
same ranking with less noise for the time.

    python benchmarks/bench_trellis.py [--ls 8,10,12,14,16] [--bits 2,3,4,5] [--codes 1mad,strat]
    python benchmarks/bench_trellis.py --decode-only      # only the decode speeds
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmquant as mq
from benchmarks.common import best_time, keep_freed_memory, machine, memcpy_rate
from mmquant.experiments.trellis import trellis_rows
from mmquant.kernels import load


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def mse_rows(specs: list[str], rows: int = 16, n: int = 4096) -> list[list]:
    """Per spec: the MSE gap to D(R) (dB, the spec's integer bits) on N(0, 1) rows, and the encode
    speed in k entries/s of wall time and per CPU second."""
    x = np.random.default_rng(3).standard_normal((rows, n))
    out = []
    for spec in specs:
        q = mq.get(spec)
        q.encode(x[:1, :64])
        t0, c0 = time.perf_counter(), time.process_time()
        enc = q.encode(x)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        mse = float(np.mean((x - q.decode(enc)) ** 2) / np.mean(x * x))
        gap = 10 * np.log10(mse / 2.0 ** (-2 * q.bits))
        out.append([q.spec, 8 * enc.code_bytes / x.size, gap, x.size / dt / 1e3, x.size / dc / 1e3])
    return out


def best_codes(gaps: dict[str, float], what: str) -> None:
    """Print the best code at every (L, k, V) among the ``tcq`` specs measured (gap in dB)."""
    best: dict[tuple[int, int, int], list[tuple[float, str]]] = {}
    for spec, gap in gaps.items():
        q = mq.get(spec)
        if q.name == "tcq":
            best.setdefault((q.L, q.bits, q.V), []).append((gap, q.code))
    if not best:
        return
    print(f"best code per rate ({what}, dB; the others after it)")
    for (L, k, V), found in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        found.sort()
        rest = ", ".join(f"{c} {g:.3f}" for g, c in found[1:])
        print(f"  k={k} L={L:2d} V={V}: {found[0][1]:7s} {found[0][0]:.3f}   {rest}", flush=True)


def _tiled(q: mq.Quantizer, x: np.ndarray, rows: int = 16) -> mq.Encoded:
    """A record of ``x``'s shape made of the codes of its first ``rows`` rows repeated (a fixed-rate
    trellis row is whole bytes; encoding all of ``x`` at L = 16 would take a minute)."""
    if not q.spec.startswith("tcq:") or x.shape[0] % rows:
        return q.encode(x)
    enc = q.encode(x[:rows])
    r = x.shape[0] // rows
    side = {k: np.tile(v, r) for k, v in enc.side.items()}
    return mq.Encoded(np.tile(enc.codes, r), side, x.shape, enc.spec, enc.seed)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """numba's thread count set to ``n`` within the block (None: unchanged)."""
    if n is None:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ls", default="8,10,12,14,16")
    ap.add_argument("--bits", default="2,3,4,5")
    ap.add_argument("--codes", default="1mad,strat,tstrat")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--extra", default="tcq:bits=2,L=16,V=2,code=strat;tcqec:rate=2;tcqec:rate=4")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mse", action="store_true", help="MSE gap on N(0, 1) rows (tcq specs)")
    ap.add_argument("--decode-only", action="store_true", help="only the decode speeds")
    args = ap.parse_args(argv)
    keep_freed_memory()
    print(machine())
    specs = [
        f"tcq:bits={k},L={L},code={c}"
        for c in args.codes.split(",")
        if c
        for k in _ints(args.bits)
        for L in _ints(args.ls)
        if L > k
    ]
    specs += [s for s in args.extra.split(";") if s]
    gaps: dict[str, float] = {}
    if args.mse:
        print(f"{'spec':32s} {'code bits':>9s} {'MSE gap':>7s} {'enc k/s':>9s} {'k/CPU s':>9s}")
        for spec in (s for s in specs if s.startswith("tcq:")):
            for r in mse_rows([spec]):
                print(f"{r[0]:32s} {r[1]:9.3f} {r[2]:7.3f} {r[3]:9.1f} {r[4]:9.1f}", flush=True)
                gaps[r[0]] = r[2]
        best_codes(gaps, "MSE gap to D(R)")
        return 0
    print(f"{'spec':32s} {'rate':>7s} {'gap dB':>7s} {'enc k/s':>9s} {'k/CPU s':>9s}")
    for spec in [] if args.decode_only else specs:
        for row in trellis_rows([spec], n=args.n, cols=args.cols):
            print(
                f"{row[0]:32s} {row[3]:7.3f} {row[4]:7.3f} {row[5]:9.1f} {row[6]:9.1f}", flush=True
            )
            gaps[row[0]] = row[4]
    best_codes(gaps, "product gap to Γ(R)")
    x = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)
    mc = memcpy_rate(x)
    print(f"decode of 256x4096 entries; float32 memcpy {mc / 1e6:.0f} M entries/s")
    print(f"{'':56s} {'M/s':>8s} {'/memcpy':>8s}")
    kern = load("trellis")
    threads = [None] if kern is None else [None, 1]
    for spec in ("tcq:bits=2,L=12,code=strat", "tcq:bits=4,L=16,code=strat", "tcqec:rate=4"):
        q = mq.get(spec)
        enc = _tiled(q, x)
        cases = [("decode", lambda q=q, e=enc: q.decode(e))]
        if kern is not None and spec.startswith("tcq:"):
            u = np.random.default_rng(1).integers(0, 1 << q.kv, (256, 4096 // q.V), np.uint8)
            t = q.table()
            cases.insert(
                0, ("trellis decoder", lambda u=u, t=t, q=q: kern.decode_fixed(u, t, q.L, q.kv))
            )
        for name, fn in cases:
            for nt in threads:
                with _threads(nt):
                    rd = x.size / best_time(fn, 4 * args.repeat)
                label = f"{spec} {name}" + (" (1 thread)" if nt else "")
                print(f"{label:56s} {rd / 1e6:8.1f} {rd / mc:8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
