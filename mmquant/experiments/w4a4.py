"""Weights, activations and queries/keys of the bundled MiniLM at 4 and 3 bits (issue 18).

For every recipe (the issue's table plus the covariance-aware recipe of
:mod:`mmquant.models.recipes`): measured bits per weight, per activation entry and per query/key
entry; mean ``1 − cos`` of the sentence embeddings and the attention-logit error on held-out
sentences; recall@1 and MRR of the retrieval task of :mod:`mmquant.models.retrieval`. Per linear
layer and per attention head: the measured relative product error of the NVFP4 recipe and of the
aware recipe (each layer on its own, on calibration inputs) against the generic and the
covariance-aware limits of :mod:`mmquant.models.limits` at the measured rates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.experiments.base import ExperimentResult, experiment
from mmquant.experiments.plots import figure

__all__ = ["RecipeScore", "score_recipe", "layer_limits", "recipe_specs", "w4a4"]


@dataclass(frozen=True)
class RecipeScore:
    """End-to-end figures of one recipe (see the module docstring)."""

    name: str
    weight_bits: float
    act_bits: float
    qk_bits: float
    one_minus_cos: float
    logit_error: float
    recall_at_1: float
    mrr: float

    def row(self, bits: float) -> list[Any]:
        return [
            bits,
            self.name,
            self.weight_bits,
            self.act_bits,
            self.qk_bits,
            self.one_minus_cos,
            self.logit_error,
            self.recall_at_1,
            self.mrr,
        ]


def score_recipe(recipe: Any, eval_sentences: int = 64) -> RecipeScore:
    """Evaluate a :class:`~mmquant.models.recipes.Recipe` (cosine, logits, retrieval)."""
    from mmquant.models import evaluate
    from mmquant.models.ecsqcode import measured_rate, reset_meters
    from mmquant.models.retrieval import evaluate_retrieval

    act = list(getattr(recipe, "act_codes", {}).values())
    qk = list(getattr(recipe, "qk_codes", {}).values())
    reset_meters(act + qk)  # entropy-coded parts: rates counted on the evaluation sentences
    ev = evaluate(recipe.model, n_sentences=eval_sentences)
    (act_bits, _, n_act), (qk_bits, _, n_qk) = measured_rate(act), measured_rate(qk)
    rt = evaluate_retrieval(recipe.model)
    return RecipeScore(
        name=recipe.name,
        weight_bits=recipe.weight_bits,
        act_bits=act_bits if n_act else recipe.act_bits,
        qk_bits=qk_bits if n_qk else recipe.qk_bits,
        one_minus_cos=1.0 - ev.cosine_mean,
        logit_error=ev.logit_error,
        recall_at_1=rt.recall_at_1,
        mrr=rt.mrr,
    )


def recipe_specs(bits: int) -> list[tuple[str | None, str | None]]:
    """(weights, activations + Q/K) of the issue's table at 4 bits, and its 3-bit analogue."""
    if bits == 4:
        return [
            ("nvfp4", "nvfp4"),
            ("e8:group=32", "e8:group=32"),
            ("watersic", None),
            ("watersic", "e8:group=32"),
            ("watersic", "nvfp4"),
        ]
    if bits == 3:
        return [
            ("int:bits=3,group=32", "int:bits=3,group=32"),
            ("e8:q=7,group=32", "e8:q=7,group=32"),
            ("watersic", None),
            ("watersic", "e8:q=7,group=32"),
            ("watersic", "int:bits=3,group=32"),
        ]
    raise ValueError(f"bits must be 4 or 3, got {bits}")


def layer_limits(recipe: Any, n_sentences: int = 64) -> dict[str, list[dict[str, Any]]]:
    """Per linear layer and per head: measured product error of ``recipe`` and the two limits.

    Each layer on its own: ``Ŵ`` from the recipe, ``X̂`` its activation code applied to the
    calibration inputs of the unquantized model (in the recipe's basis), error
    ``‖X̂Ŵᵀ − XWᵀ‖²/‖XWᵀ‖²``; limits at the measured bits of ``Ŵ`` and ``X̂`` with
    ``Σ_W = WᵀW/rows`` and ``Σ_X = XᵀX/T``. Heads likewise with ``Q_h``, ``K_h``.
    """
    from mmquant.core import get
    from mmquant.models import MiniLM
    from mmquant.models.calibration import calibration_sentences
    from mmquant.models.capture import capture
    from mmquant.models.ecsqcode import reset_meters
    from mmquant.models.limits import product_error, product_limit, weight_covariance

    qm = recipe.model
    ref = recipe.reference if recipe.reference is not None else MiniLM.load(qm.dtype)
    cap = capture(ref, calibration_sentences(n_sentences))
    layers = []
    for name in ref.linear_names:
        w = np.asarray(ref.weights[name + ".weight"], np.float64)
        w_hat = np.asarray(qm.weights[name + ".weight"], np.float64)
        x = np.asarray(cap.inputs[name], np.float64)
        code = qm.act_quantizer
        code = code.get(name) if isinstance(code, dict) else code
        if code is not None:
            reset_meters([code])  # an entropy-coded code: its rate on these inputs
        x_hat = x if code is None else np.asarray(code.quantize(x.astype(qm.dtype)), np.float64)
        if code is None:
            rx = 64.0
        elif hasattr(code, "bits_per_entry"):
            rx = float(code.bits_per_entry)
        else:
            rx = get(code.spec).encode(x.astype(qm.dtype)).bits_per_entry
        rw = float(qm.weight_bits.get(name, 64.0))
        lim = product_limit(weight_covariance(w), x.T @ x / len(x), rw, rx)
        layers.append(
            {
                "layer": name,
                "weight_bits": rw,
                "act_bits": rx,
                "measured": product_error(w, x, w_hat, x_hat),
                "generic": lim.generic,
                "aware": lim.aware,
                "highrate": lim.highrate,
            }
        )
    heads = []
    qq = qm.qk_quantizer
    for i in range(len(cap.queries)):
        whole = {}  # (layer, "q"|"k") codes: one code for all heads of the layer
        for which, a in (("q", cap.queries[i]), ("k", cap.keys[i])):
            c = qq.get((i, which)) if isinstance(qq, dict) else None
            if c is not None:
                a = np.asarray(a, qm.dtype)
                a_hat = np.asarray(c.quantize(a.reshape(len(a), -1)), np.float64)
                whole[which] = (a_hat.reshape(a.shape), float(c.bits_per_entry))
        for h in range(cap.queries[i].shape[1]):
            q, k = (np.asarray(a, np.float64) for a in cap.head(i, h))
            pair = []
            for which, a in (("q", q), ("k", k)):
                if which in whole:
                    pair.append((whole[which][0][:, h, :], whole[which][1]))
                    continue
                c = qq.get((i, which, h)) if isinstance(qq, dict) else qq
                if c is not None:
                    reset_meters([c])
                if c is None:
                    pair.append((a, 64.0))
                    continue
                a_hat = np.asarray(c.quantize(a.astype(qm.dtype)), np.float64)
                if hasattr(c, "bits_per_entry"):
                    bits = float(c.bits_per_entry)
                else:
                    bits = get(c.spec).encode(a.astype(qm.dtype)).bits_per_entry
                pair.append((a_hat, bits))
            lim = product_limit(q.T @ q / len(q), k.T @ k / len(k), pair[0][1], pair[1][1])
            heads.append(
                {
                    "layer": i,
                    "head": h,
                    "q_bits": pair[0][1],
                    "k_bits": pair[1][1],
                    "measured": product_error(q, k, pair[0][0], pair[1][0]),
                    "generic": lim.generic,
                    "aware": lim.aware,
                    "highrate": lim.highrate,
                }
            )
    return {"layers": layers, "heads": heads}


@experiment("w4a4", "MiniLM W4A4 + Q/K: recipes, product limits per layer/head, retrieval")
def w4a4(
    bits: Sequence[int] = (4, 3),
    n_sentences: int = 64,
    eval_sentences: int = 64,
) -> ExperimentResult:
    """The recipe table at 4 and 3 bits and the per-layer limit table (at 4 bits)."""
    from mmquant.models import MiniLM
    from mmquant.models.baselines import baseline_recipe
    from mmquant.models.capture import calibration_capture
    from mmquant.models.recipes import aware_recipe, watersic_weights
    from mmquant.models.retrieval import evaluate_retrieval

    model = MiniLM.load(np.float32)
    timings: dict[str, float] = {}
    fp_rt = evaluate_retrieval(model)
    rows: list[list[Any]] = []
    scores: dict[int, list[RecipeScore]] = {}
    limits: dict[str, Any] = {}
    for b in bits:
        rate_w = 4.0 if b == 4 else 3.0
        rate_aware = 4.5 if b == 4 else 3.0
        rows.append(
            [b, "none / none", np.nan, np.nan, np.nan, 0.0, 0.0, fp_rt.recall_at_1, fp_rt.mrr]
        )
        scores[b] = []
        # one WaterSIC run per rate, shared by the three WaterSIC rows
        cap = calibration_capture(n_sentences, model.dtype.name, model.max_length)
        ws = watersic_weights(model, cap.covariances, rate_w, damp=1e-2)
        for w_spec, a_spec in recipe_specs(b):
            t0 = time.perf_counter()
            rec = baseline_recipe(
                model, w_spec, a_spec, weight_rate=rate_w, n_sentences=n_sentences, watersic=ws
            )
            scores[b].append(score_recipe(rec, eval_sentences))
            timings[f"{b} bits: {rec.name}"] = time.perf_counter() - t0
            if b == 4 and w_spec == "nvfp4":
                limits["nvfp4 / nvfp4"] = layer_limits(rec, n_sentences)
        t0 = time.perf_counter()
        rec = aware_recipe(model, rate_aware, n_sentences=n_sentences)
        scores[b].append(score_recipe(rec, eval_sentences))
        timings[f"{b} bits: {rec.name}"] = time.perf_counter() - t0
        if b == 4:
            limits[rec.name] = layer_limits(rec, n_sentences)
        rows += [s.row(b) for s in scores[b]]
    columns = [
        "bits",
        "weights / activations + Q/K",
        "bits/weight",
        "bits/activation",
        "bits/QK",
        "1 − cos",
        "logit error",
        "recall@1",
        "MRR",
    ]

    def plot(path: str | Path) -> None:
        with figure(path, 1, 3, figsize=(16, 5), dpi=110) as (_fig, axes):
            for name, mk in zip(limits, "os"):
                lay = limits[name]["layers"]
                x = np.arange(len(lay))
                axes[0].semilogy(x, [r["measured"] for r in lay], mk, ms=4, label=f"{name}")
                axes[0].semilogy(
                    x, [r["generic"] for r in lay], "-", lw=1, label=f"generic @ {name}"
                )
                axes[0].semilogy(x, [r["aware"] for r in lay], ":", lw=1, label=f"aware @ {name}")
                hd = limits[name]["heads"]
                xh = np.arange(len(hd))
                axes[1].semilogy(xh, [r["measured"] for r in hd], mk, ms=3, label=f"{name}")
                axes[1].semilogy(xh, [r["generic"] for r in hd], "-", lw=1, label="generic")
                axes[1].semilogy(xh, [r["aware"] for r in hd], ":", lw=1, label="aware")
            axes[0].set_title("linear layers: ‖ŴX̂ − WX‖²/‖WX‖² (each alone, 4-bit table)")
            axes[0].set_xlabel("layer (forward order)")
            axes[1].set_title("heads: ‖Q̂K̂ᵀ − QKᵀ‖²/‖QKᵀ‖²")
            axes[1].set_xlabel("layer·12 + head")
            for b, mk in zip(scores, "o^"):
                for s in scores[b]:
                    axes[2].loglog(s.one_minus_cos, max(s.logit_error, 1e-6), mk, ms=6)
                    axes[2].annotate(
                        f"{s.name} ({b}b)", (s.one_minus_cos, max(s.logit_error, 1e-6)), fontsize=6
                    )
            axes[2].axvline(8e-3, color="gray", ls="--", lw=1)
            axes[2].axhline(1e-2, color="gray", ls="--", lw=1)
            axes[2].set_xlabel("1 − cos (embeddings)")
            axes[2].set_ylabel("attention-logit error")
            axes[2].set_title("recipes (targets dashed)")
            for ax in axes[:2]:
                ax.legend(fontsize=6)

    return ExperimentResult(
        name="w4a4",
        description=(
            f"MiniLM, weights/activations/Q-K quantized; codes fitted on {n_sentences} "
            f"calibration sentences, 1 − cos and logit error on {eval_sentences} held-out "
            f"sentences, retrieval on {fp_rt.queries} topics of the evaluation half; WaterSIC at "
            "4.0 (3.0) bits in the baselines; the aware recipe at 4.5 (3.0) bits: trellis-SIC "
            "weights, entropy-coded (ECSQ) activation and Q/K codes, their rates measured on "
            "the evaluation sentences"
        ),
        columns=columns,
        rows=rows,
        details={
            "limits_4bit": limits,
            "unquantized_retrieval": [fp_rt.recall_at_1, fp_rt.mrr],
            "seconds_per_recipe": timings,
        },
        plot=plot,
    )
