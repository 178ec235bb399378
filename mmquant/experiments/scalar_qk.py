"""``qk-activations``: product-optimal data-driven compander on MiniLM queries and keys (2603.19559).

Imported by :mod:`mmquant.experiments.scalar` (which registers it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.experiments.base import ExperimentResult, experiment
from mmquant.experiments.plots import figure
from mmquant.formats.compander import DataCompander

__all__ = ["qk_activations", "attention_errors"]

_QK_COLUMNS = [
    "method",
    "bits/entry",
    "logit MSE",
    "KL (nats)",
    "frac heads opt wins MSE",
    "frac heads opt wins KL",
]


def _padded(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[sentences, T_max, d]`` copy of token rows packed by ``offsets`` (zeros as padding)."""
    lens = np.diff(offsets)
    out = np.zeros((lens.size, int(lens.max()), x.shape[1]), np.float64)
    pos = np.arange(x.shape[0]) - np.repeat(offsets[:-1], lens)
    out[np.repeat(np.arange(lens.size), lens), pos] = x
    return out


def attention_errors(
    q: np.ndarray, k: np.ndarray, q_hat: np.ndarray, k_hat: np.ndarray, offsets: np.ndarray
) -> tuple[float, float]:
    """Attention-logit MSE and mean softmax KL of quantized queries/keys of one head.

    Logits ``S = QKᵀ/√d`` within each sentence (rows ``offsets[s]:offsets[s+1]``; no attention
    across sentences). MSE = mean of ``(S − Ŝ)²`` over all (query, key) pairs of all sentences;
    KL = mean over queries of ``Σ_j P_ij·log(P_ij/P̂_ij)`` (nats), ``P = softmax(S)`` per row.
    """
    offsets = np.asarray(offsets, np.int64)
    lens = np.diff(offsets)
    valid = np.arange(int(lens.max()))[None, :] < lens[:, None]  # [S, T]
    mask = valid[:, :, None] & valid[:, None, :]
    scale = 1.0 / math.sqrt(q.shape[1])
    s = np.einsum("std,sud->stu", _padded(q, offsets), _padded(k, offsets)) * scale
    sh = np.einsum("std,sud->stu", _padded(q_hat, offsets), _padded(k_hat, offsets)) * scale
    diff = np.where(mask, s - sh, 0.0)
    mse = float(np.sum(diff * diff) / np.sum(lens * lens))
    neg = np.where(valid[:, None, :], 0.0, -np.inf)  # keys outside the sentence
    ls = s + neg
    ls = ls - ls.max(axis=2, keepdims=True)
    ls -= np.log(np.sum(np.exp(ls), axis=2, keepdims=True))
    lh = sh + neg
    lh = lh - lh.max(axis=2, keepdims=True)
    lh -= np.log(np.sum(np.exp(lh), axis=2, keepdims=True))
    term = np.exp(ls) * (np.where(mask, ls, 0.0) - np.where(mask, lh, 0.0))
    kl = np.sum(np.where(mask, term, 0.0), axis=2)  # [S, T]
    return mse, float(np.sum(kl[valid]) / offsets[-1])


def _offsets(cap: Any) -> np.ndarray:
    return np.asarray(cap.offsets, np.int64)


@experiment("qk-activations", "data-driven product compander on MiniLM queries/keys, per head")
def qk_activations(
    bits: int = 4,
    n_fit: int = 32,
    n_eval: int = 32,
    layers: Sequence[int] | None = None,
    max_length: int = 128,
    refine: int = 10,
) -> ExperimentResult:
    """Queries and keys of every attention head, quantized at ``bits`` bits per entry (+ scales).

    Setup: the bundled MiniLM (float32) runs on ``n_fit`` calibration sentences and on ``n_eval``
    held-out evaluation sentences (:func:`mmquant.models.capture.calibration_capture`). Per head,
    queries and keys are ``[tokens, 32]`` and quantized along the head dimension, each token row
    with its float16 RMS. Methods:

    * ``data-product``: the product-optimal data-driven compander, ``λ ∝ (p̂·m̂)^{1/3}`` with
      ``m̂(x) = E[K²|Q = x]`` (resp. ``E[Q²|K = x]``) estimated on the calibration tokens of that
      head (:func:`mmquant.formats.compander.fit_product_compander`), one codebook per head and side
      (its 2^bits float32 points are counted in the rate); ``refine`` weighted-Lloyd iterations
      on the calibration samples (weights σ_i²·S_l, see
      :func:`~mmquant.formats.compander.product_weights`);
    * ``data-pd``: the same estimator with ``m ≡ 1`` (a data Panter–Dite compander);
    * ``lloyd-max``, ``panter-dite`` (Gaussian ``compander:rho=0``), ``uniform``, and the INT / FP
      formats when registered.

    Measured on the evaluation tokens: attention-logit MSE (``S = QKᵀ/√32`` within each sentence)
    and the mean softmax KL (nats per query), per head; the table gives means over heads and the
    fraction of heads where ``data-product`` beats each method.
    """
    from mmquant.experiments.scalar import baseline_methods
    from mmquant.models.capture import calibration_capture

    fit = calibration_capture(n_fit, max_length=max_length, split="calibration")
    ev = calibration_capture(n_eval, max_length=max_length, split="evaluation")
    n_layers = len(ev.queries)
    n_heads = ev.queries[0].shape[1]
    lay = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    offs = _offsets(ev)
    dc = DataCompander(bits=bits, refine=refine)
    methods, notes = baseline_methods(bits, None)
    methods.pop("data-product")
    labels = ["data-product", "data-pd", *methods]
    per_head: list[dict[str, Any]] = []
    rates: dict[str, list[float]] = {lb: [] for lb in labels}
    for li in lay:
        for h in range(n_heads):
            qf, kf = (np.asarray(a, np.float64) for a in fit.head(li, h))
            qe, ke = (np.asarray(a, np.float64) for a in ev.head(li, h))
            rec: dict[str, Any] = {"layer": li, "head": h, "mse": {}, "kl": {}}
            recon: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
            for label, partner_q, partner_k in (
                ("data-product", kf, qf),
                ("data-pd", None, None),
            ):
                eq = dc.encode_with(qe, dc.fit(qf, partner_q))
                ek = dc.encode_with(ke, dc.fit(kf, partner_k))
                recon[label] = (
                    dc.decode(eq),
                    dc.decode(ek),
                    0.5 * (eq.bits_per_entry + ek.bits_per_entry),
                )
            for label, meth in methods.items():
                qh, rq = meth(qe, ke)
                kh, rk = meth(ke, qe)
                recon[label] = (qh, kh, 0.5 * (rq + rk))
            for label, (qh, kh, rate) in recon.items():
                mse, kl = attention_errors(qe, ke, qh, kh, offs)
                rec["mse"][label] = mse
                rec["kl"][label] = kl
                rates[label].append(rate)
            per_head.append(rec)
    rows: list[list[Any]] = []
    opt_mse = np.array([r["mse"]["data-product"] for r in per_head])
    opt_kl = np.array([r["kl"]["data-product"] for r in per_head])
    for label in labels:
        mse = np.array([r["mse"][label] for r in per_head])
        kl = np.array([r["kl"][label] for r in per_head])
        rows.append(
            [
                label,
                float(np.mean(rates[label])),
                float(np.mean(mse)),
                float(np.mean(kl)),
                float(np.mean(opt_mse < mse)) if label != "data-product" else float("nan"),
                float(np.mean(opt_kl < kl)) if label != "data-product" else float("nan"),
            ]
        )
    mean_rate = {lb: float(np.mean(rates[lb])) for lb in labels}
    # baselines at no more than the product compander's rate (+0.02 bit): INT g=32 costs +0.5
    base = [
        lb
        for lb in labels
        if lb != "data-product" and mean_rate[lb] <= mean_rate["data-product"] + 0.02
    ]
    best_mse = np.array([min(r["mse"][lb] for lb in base) for r in per_head])
    best_kl = np.array([min(r["kl"][lb] for lb in base) for r in per_head])
    win_mse = float(np.mean(opt_mse < best_mse))
    win_kl = float(np.mean(opt_kl < best_kl))
    best_row = ["(best baseline ≤ rate, per head)", float("nan"), float(np.mean(best_mse))]
    rows.append([*best_row, float(np.mean(best_kl)), win_mse, win_kl])
    details = {
        "bits": bits,
        "n_fit_sentences": n_fit,
        "n_eval_sentences": n_eval,
        "eval_tokens": int(offs[-1]),
        "layers": lay,
        "baselines_at_equal_rate": base,
        "fraction_heads_product_wins_mse": win_mse,
        "fraction_heads_product_wins_kl": win_kl,
        "per_head": per_head,
        "notes": notes,
    }

    def plot(path: str | Path) -> None:
        with figure(path, 2, 1, figsize=(10, 6.5), sharex=True, dpi=110) as (_fig, axes):
            x = np.arange(len(per_head))
            for ax, key in zip(axes, ("mse", "kl")):
                ref = np.array([r[key]["data-product"] for r in per_head])
                for label in labels[1:]:
                    ax.semilogy(x, [r[key][label] for r in per_head] / ref, ".", label=label)
                ax.axhline(1.0, color="k", lw=0.8)
                ax.set_ylabel(f"{key} / {key}(data-product)")
            axes[1].set_xlabel(f"head (layer·{n_heads} + head)")
            axes[0].legend(fontsize=7, ncol=3)
            axes[0].set_title(
                f"MiniLM Q/K, {bits} bits: above 1 = the product-optimal compander wins\n"
                f"(vs the best baseline at ≤ its rate: MSE {win_mse:.0%}, KL {win_kl:.0%} of heads)",
                fontsize=10,
            )

    return ExperimentResult(
        "qk-activations",
        f"MiniLM queries/keys per head at {bits} bits (+float16 row RMS, data codebooks refined "
        f"{refine}×): attention-logit MSE, "
        f"softmax KL; codebooks fitted on {n_fit} calibration sentences, measured on {n_eval} "
        "held-out ones",
        _QK_COLUMNS,
        rows,
        details,
        plot,
    )
