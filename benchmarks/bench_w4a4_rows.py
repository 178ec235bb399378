"""``mmquant reproduce w4a4``'s rows one at a time, each printed (and appended as JSON) when done.

Same recipes, calibration, evaluation and retrieval as the experiment
(:mod:`mmquant.experiments.w4a4`), in an order that gives the cheap rows first, so that a long
run on a loaded machine leaves every finished row behind: for each bit count, the unquantized
model, NVFP4 / INT, WaterSIC alone, WaterSIC + NVFP4 / INT, the covariance-aware recipe, then
the E8 rows (E8 activation codes are the slow part: ~2 min per recipe on a loaded 2-core
machine). With ``--limits`` the per-layer and per-head limit tables of the 4-bit NVFP4 and aware
recipes go to ``--out`` as well.

Run: ``python benchmarks/bench_w4a4_rows.py [--bits 4 3] [--out w4a4_rows.jsonl] [--limits]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from mmquant.experiments.w4a4 import layer_limits, recipe_specs, score_recipe
    from mmquant.models import MiniLM
    from mmquant.models.baselines import baseline_recipe
    from mmquant.models.capture import calibration_capture
    from mmquant.models.recipes import aware_recipe, watersic_weights
    from mmquant.models.retrieval import evaluate_retrieval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--out", default="w4a4_rows.jsonl")
    ap.add_argument("--limits", action="store_true")
    ap.add_argument("--sentences", type=int, default=64, help="calibration sentences")
    ap.add_argument("--eval-sentences", type=int, default=64)
    args = ap.parse_args()
    model = MiniLM.load(np.float32)

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    fp = evaluate_retrieval(model)
    emit({"bits": None, "name": "none / none", "recall@1": fp.recall_at_1, "mrr": fp.mrr})
    cap = calibration_capture(args.sentences, "float32", model.max_length)
    for b in args.bits:
        rate_w, rate_aware = (4.0, 4.5) if b == 4 else (3.0, 3.0)
        ws = watersic_weights(model, cap.covariances, rate_w, damp=1e-2)
        specs = recipe_specs(b)
        order = [s for s in specs if not (s[1] or "").startswith("e8")] + [None]
        order += [s for s in specs if (s[1] or "").startswith("e8")]
        for spec in order:
            t0 = time.perf_counter()
            if spec is None:
                rec = aware_recipe(model, rate_aware, n_sentences=args.sentences)
            else:
                rec = baseline_recipe(
                    model,
                    spec[0],
                    spec[1],
                    weight_rate=rate_w,
                    n_sentences=args.sentences,
                    watersic=ws,
                )
            s = score_recipe(rec, args.eval_sentences)
            row = dict(
                zip(["bits", "name", "w", "a", "qk", "1-cos", "logit", "recall@1", "mrr"], s.row(b))
            )
            row["seconds"] = round(time.perf_counter() - t0, 1)
            emit(row)
            if args.limits and b == 4 and (spec is None or spec[0] == "nvfp4"):
                lim = layer_limits(rec, args.sentences)
                emit({"limits": rec.name, **lim})


if __name__ == "__main__":
    main()
