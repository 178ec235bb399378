"""Speed and weighted error of the ECSQ code against the channel code on Gaussian data.

Fits :class:`mmquant.models.ecsqcode.ECSQCode` and :class:`mmquant.models.channelcode.ChannelCode`
on ``--tokens`` calibration tokens of ``--n`` coordinates (spreads and error weights spanning
two decades), codes as many held-out tokens, and prints per code: fit time, quantize time
(ECSQ: with its exact rate count), measured bits per entry, weighted error in dB below the
data's, and for ECSQ the real rANS encode/decode time (``constriction``, per-token messages).

Run: ``python benchmarks/bench_ecsq.py [--n 384] [--tokens 2000] [--rate 4.0]`` (about 20 s).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from mmquant.models.channelcode import ChannelCode
    from mmquant.models.ecsqcode import ECSQCode

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--encode-tokens", type=int, default=32, help="tokens really rANS-coded")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, t = args.n, args.tokens
    sd = np.geomspace(10.0, 0.1, n)
    w = rng.permutation(np.geomspace(1.0, 0.01, n))
    x = rng.normal(size=(2 * t, n)) * sd
    fit, held = x[:t], x[t:]
    base = float(np.mean((held**2) @ w))
    for label, make in (
        ("channel", lambda: ChannelCode.fit(fit, w, args.rate)),
        ("ecsq", lambda: ECSQCode.fit(fit, w, args.rate, block=1)),
    ):
        t0 = time.perf_counter()
        code = make()
        t1 = time.perf_counter()
        xh = code.quantize(held)
        t2 = time.perf_counter()
        err = float(np.mean(((xh - held) ** 2) @ w))
        print(
            f"{label:8s} fit {t1 - t0:6.2f} s  quantize {1e6 * (t2 - t1) / t:7.1f} µs/token  "
            f"{code.bits_per_entry:.4f} b/entry  weighted SNR {10 * np.log10(base / err):6.2f} dB"
        )
        if label == "ecsq":
            part = held[: args.encode_tokens]
            t3 = time.perf_counter()
            streams = code.encode(part)
            t4 = time.perf_counter()
            back = code.decode(streams, len(part))
            t5 = time.perf_counter()
            real = sum(32 * s.size for s in streams) / part.size
            assert np.array_equal(back, code.quantize(part))
            print(
                f"         rANS encode {1e3 * (t4 - t3) / len(part):.1f} ms/token, decode "
                f"{1e3 * (t5 - t4) / len(part):.1f} ms/token (Python loop over coordinates); "
                f"real {real:.4f} b/entry on {len(part)} tokens"
            )


if __name__ == "__main__":
    main()
