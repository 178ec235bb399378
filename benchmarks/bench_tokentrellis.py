"""Trellis-coded token codes against the uniform channel code: error and encode time per entry.

On seeded Gaussian tokens with spread per-coordinate variances and error weights (the shape of
the activations after the online transform and the per-token scale), prints for each state-bit
count ``L`` the weighted error of :class:`~mmquant.models.tokentrellis.TrellisChannelCode`
relative to :class:`~mmquant.models.channelcode.ChannelCode` at the same rate (dB, positive:
the trellis is better), the fit time and the code+decode time per entry. Timings on a loaded
machine are noisy: run it alone, several times.

Run: ``python benchmarks/bench_tokentrellis.py [--tokens 2000] [--n 384] [--rate 4.3] [--L 10,12,14]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from mmquant.models.channelcode import ChannelCode
    from mmquant.models.tokentrellis import TrellisChannelCode

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--rate", type=float, default=4.5 - 8 / 384)
    ap.add_argument("--L", default="10,12,14")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    sd = np.geomspace(3.0, 0.3, n)
    x = rng.normal(size=(2 * args.tokens, n)) * sd
    w = np.geomspace(1.0, 0.1, n)[rng.permutation(n)]
    fit, test = x[: args.tokens], x[args.tokens :]

    def werr(code: object) -> float:
        e = code.quantize(test) - test  # type: ignore[attr-defined]
        return float(np.sum(e * e * w))

    cc = ChannelCode.fit(fit, w, args.rate)
    ref = werr(cc)
    print(f"{args.tokens} tokens × {n}, {cc.bits_per_entry:.3f} bits/entry; channel code 0 dB")
    for L in (int(v) for v in args.L.split(",")):
        t0 = time.perf_counter()
        tc = TrellisChannelCode.fit(fit, w, args.rate, L=L)
        t1 = time.perf_counter()
        tc.quantize(test[:64])  # compile/warm
        t2 = time.perf_counter()
        e = werr(tc)
        t3 = time.perf_counter() - t2
        print(
            f"  L={L:2d}: {10 * np.log10(ref / e):+.2f} dB, fit {t1 - t0:.1f} s, "
            f"code+decode {1e6 * t3 / test.size:.2f} µs/entry ({tc.bits_per_entry:.3f} bits)"
        )


if __name__ == "__main__":
    main()
