"""Speed of the weight-only methods: seconds per layer of the bundled MiniLM and for a big layer.

For each method (``rtn``, ``gptq``, ``gptq-rot``, ``watersic``, ``e8sic``, ``tcqsic``) at ``--rate``
bits/weight: the mean and total seconds of :func:`mmquant.weightonly.quantize_layer` over the
linear layers of MiniLM (with their calibration Σ_X), and the seconds of one ``--big`` × ``--big``
layer (iid Gaussian W, Σ_X log-uniform over four decades, as in the Gaussian benchmark). Every
time includes the rate search and the real bitstream. One run each (not best-of: a run takes
seconds to minutes). ``--gaps R ...`` also prints the gap to the waterfilling limit on the full
Gaussian benchmark (a = 4096, n = 512, seed 2026; the figure of issue 17, which the tests check at
n = 128) with the seconds of each run.

    python benchmarks/bench_weightonly.py [--rate 4] [--big 4096] [--methods watersic e8sic]
        [--layers attention] [--no-model] [--no-big] [--gaps 2 3 4 5]

Measured on a loaded 2-core AMD EPYC (other jobs running; rerun on an idle machine), 4 bits:
``--methods watersic e8sic --layers layer.0. --big 1024``: MiniLM layer 0 (6 layers) WaterSIC
1.07 s/layer, E8-SIC 4.4 s/layer; one 1024×1024 Gaussian layer WaterSIC 6.4 s, E8-SIC 8.6 s.
All 36 MiniLM layers inside ``quantize_minilm``: E8-SIC 1.9 s/layer, trellis-SIC 3.7 s/layer (one
job, load ≈ 2). ``--no-model --big 4096 --methods watersic e8sic tcqsic`` (load ≈ 2): one
4096×4096 layer WaterSIC 46.9 s, E8-SIC 134.0 s, trellis-SIC 121.4 s (the SIC loop is O(a·n²)).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from common import machine

from mmquant.weightonly import METHODS, quantize_layer


def _model_layers(layers: str | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from mmquant.models import MiniLM, calibration_capture

    model = MiniLM.load(dtype=np.float32)
    cap = calibration_capture(64)
    out = []
    for name in model.linear_names:
        if layers is None or layers in name:
            w = np.asarray(model.weights[name + ".weight"], np.float64)
            out.append((name, w, np.asarray(cap.covariances[name], np.float64)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--big", type=int, default=4096)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--layers", default=None, help="only MiniLM layers containing this string")
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--gaps", type=float, nargs="*", default=[], help="rates of the gap table")
    args = ap.parse_args()
    print(machine())
    if not args.no_model:
        layers = _model_layers(args.layers)
        print(f"MiniLM: {len(layers)} layers at {args.rate:g} bits/weight (damp 1e-2)")
        for m in args.methods:
            kw = {} if m == "rtn" else {"damp": 1e-2}
            t0 = time.perf_counter()
            for _, w, s in layers:
                quantize_layer(m, w, s, args.rate, **kw)
            dt = time.perf_counter() - t0
            print(f"  {m:9s} {dt / len(layers):7.3f} s/layer  ({dt:.1f} s total)", flush=True)
    if not args.no_big:
        from mmquant.experiments.weight_only import gaussian_problem

        w, s, _ = gaussian_problem(args.big, args.big)
        print(f"one {args.big}x{args.big} layer (Gaussian, Σ_X over four decades)")
        for m in args.methods:
            t0 = time.perf_counter()
            q = quantize_layer(m, w, s, args.rate)
            dt = time.perf_counter() - t0
            print(f"  {m:9s} {dt:8.1f} s  ({q.bits_per_weight:.3f} bits/weight)", flush=True)
    if args.gaps:
        from mmquant.experiments.weight_only import gaussian_problem
        from mmquant.theory.highrate import waterfill_rate

        w, s, lam = gaussian_problem(4096, 512, seed=2026)
        print("gap to waterfilling, Gaussian 4096x512 (bits/weight; seconds)")
        for m in args.methods:
            cells = []
            for r in args.gaps:
                t0 = time.perf_counter()
                q = quantize_layer(m, w, s, r)
                dt = time.perf_counter() - t0
                cells.append(
                    f"R={r:g}: {q.bits_per_weight - waterfill_rate(lam, q.wmse):.3f} ({dt:.0f} s)"
                )
            print(f"  {m:9s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
