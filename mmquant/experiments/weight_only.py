"""Weight-only quantization of the bundled MiniLM against the waterfilling limit (arXiv 2601.17187).

Every linear layer ``y = Wx`` (36 of them) is quantized with its own calibration covariance
``Σ_X`` (inputs of that layer on calibration sentences from CPython's documentation) by RTN,
GPTQ, GPTQ after a random rotation, WaterSIC, E8-SIC and trellis-SIC (WaterSIC's loop with E8 or
entropy-coded TCQ columns), all entropy coded, at the same target rate (``methods``: a list,
any of :data:`~mmquant.weightonly.METHODS`). Per layer: measured bits/weight (bitstream + side
information), WMSE, and the gap ``bits − R_limit(WMSE)`` to the reverse-waterfilling limit of iid
Gaussian weights with the layer's variance σ² = mean(W²). End to end: mean cosine similarity of
the sentence embeddings with the unquantized model, on held-out sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.experiments.base import ExperimentResult, experiment
from mmquant.experiments.plots import figure
from mmquant.models.files import short_layer_name
from mmquant.theory.highrate import waterfill_rate
from mmquant.validation import check_float, check_int
from mmquant.weightonly import METHODS, quantize_layer, waterfill_gap_bits

__all__ = [
    "LayerResult",
    "MinilmWeights",
    "GAUSSIAN_METHODS",
    "gaussian_problem",
    "quantize_minilm",
    "weight_only",
    "weight_only_gaussian",
]


@dataclass(frozen=True)
class LayerResult:
    """One quantized layer: its name, shape and measured figures (bits per weight, WMSE, gap)."""

    layer: str
    rows: int
    cols: int
    method: str
    bits_per_weight: float
    side_bits_per_weight: float
    entropy: float
    wmse: float
    relative_wmse: float
    gap_bits: float


@dataclass(frozen=True)
class MinilmWeights:
    """All layers of MiniLM quantized by one method, and the end-to-end quality."""

    method: str
    rate: float
    layers: list[LayerResult]
    cosine_mean: float
    cosine_min: float
    bits_per_weight: float

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rate": self.rate,
            "bits_per_weight": self.bits_per_weight,
            "cosine_mean": self.cosine_mean,
            "cosine_min": self.cosine_min,
            "layers": [asdict(r) for r in self.layers],
        }


def quantize_minilm(
    method: str,
    rate: float,
    *,
    n_sentences: int = 32,
    eval_sentences: int = 32,
    seed: int = 0,
    layers: str | None = None,
    damp: float = 1e-2,
    progress: Any = None,
) -> MinilmWeights:
    """Quantize every linear layer of MiniLM with ``method`` at ``rate`` bits/weight.

    Parameters
    ----------
    method : {"rtn", "gptq", "gptq-rot", "watersic", "e8sic", "tcqsic"}
    rate : float
        Target measured rate (bits/weight, side information included).
    n_sentences : int
        Calibration sentences for Σ_X (the ``"calibration"`` half of the pool).
    eval_sentences : int
        Held-out sentences (``"evaluation"`` half) for the embedding cosine.
    seed : int
        Rotation seed for ``gptq-rot``.
    layers : str, optional
        Quantize only the layers whose name contains this string (the others stay unquantized).
    damp : float
        Relative damping of Σ_X for GPTQ and WaterSIC (δ = damp·mean diag Σ_X). Calibration
        covariances from a few hundred tokens are rank deficient; 1e-2 (GPTQ's default) keeps
        the quantizer from overfitting them (the WMSE is still measured with the undamped Σ_X).
    progress : callable, optional
        ``progress(i, total, layer_name)`` called before each layer (the CLI's progress bar).

    Returns
    -------
    MinilmWeights
    """
    from mmquant.models import MiniLM, calibration_capture, evaluate, quantize_model

    r = check_float(rate, "rate", 0.0, lo_open=True)
    ns = check_int(n_sentences, "n_sentences", 1)
    ne = check_int(eval_sentences, "eval_sentences", 1)
    model = MiniLM.load(dtype=np.float32)
    cap = calibration_capture(ns)
    eig_cache: dict[int, np.ndarray] = {}
    rows: list[LayerResult] = []
    replaced: dict[str, np.ndarray] = {}
    names = [nm for nm in model.linear_names if layers is None or layers in nm]
    if not names:
        raise ValueError(f"no linear layer name contains {layers!r}")
    total_bits = 0.0
    total_w = 0
    for i, name in enumerate(names):
        if progress is not None:
            progress(i, len(names), name)
        w = np.asarray(model.weights[name + ".weight"], np.float64)
        sigma = np.asarray(cap.covariances[name], np.float64)
        key = id(cap.covariances[name])
        if key not in eig_cache:
            eig_cache[key] = np.clip(np.linalg.eigvalsh(sigma), 0.0, None)
        kw = {} if method == "rtn" else {"damp": damp}
        q = quantize_layer(method, w, sigma, r, seed=seed, **kw)
        s2 = float(np.mean(w**2))
        power = float(np.sum((w @ sigma) * w) / w.size)
        gap = waterfill_gap_bits(q, sigma, sigma2=s2, eigenvalues=eig_cache[key])
        rows.append(
            LayerResult(
                layer=name,
                rows=w.shape[0],
                cols=w.shape[1],
                method=method,
                bits_per_weight=q.bits_per_weight,
                side_bits_per_weight=q.side_bits_per_weight,
                entropy=q.entropy,
                wmse=q.wmse,
                relative_wmse=q.wmse / power,
                gap_bits=gap,
            )
        )
        replaced[name] = q.w_hat
        total_bits += q.bits_per_weight * w.size
        total_w += w.size
    ev = evaluate(quantize_model(model, weights=replaced), n_sentences=ne)
    return MinilmWeights(
        method=method,
        rate=r,
        layers=rows,
        cosine_mean=ev.cosine_mean,
        cosine_min=ev.cosine_min,
        bits_per_weight=total_bits / total_w,
    )


@experiment(
    "weight-only",
    "MiniLM layers by RTN/GPTQ/GPTQ+rot/WaterSIC/E8-SIC/trellis-SIC: gap to waterfilling",
)
def weight_only(
    rate: float = 4.0,
    n_sentences: int = 64,
    eval_sentences: int = 32,
    methods: Sequence[str] = METHODS,
    layers: str | None = None,
) -> ExperimentResult:
    """Gap per layer of MiniLM to the waterfilling limit for each method, and embedding cosine."""
    results = {
        m: quantize_minilm(
            m, rate, n_sentences=n_sentences, eval_sentences=eval_sentences, layers=layers
        )
        for m in methods
    }
    first = results[methods[0]]
    columns = ["layer", "shape", *[f"gap {m}" for m in methods]]
    rows: list[list[Any]] = []
    for i, lr in enumerate(first.layers):
        rows.append(
            [
                short_layer_name(lr.layer),
                f"{lr.rows}x{lr.cols}",
                *[results[m].layers[i].gap_bits for m in methods],
            ]
        )
    rows.append(
        [
            "mean gap",
            "",
            *[float(np.mean([x.gap_bits for x in results[m].layers])) for m in methods],
        ]
    )
    rows.append(["bits/weight", "", *[results[m].bits_per_weight for m in methods]])
    rows.append(["cosine", "", *[results[m].cosine_mean for m in methods]])

    def plot(path: str | Path) -> None:
        with figure(path, figsize=(10, 4.5), dpi=120) as (_fig, ax):
            x = np.arange(len(first.layers))
            for m in methods:
                ax.plot(
                    x,
                    [lr.gap_bits for lr in results[m].layers],
                    "o-",
                    ms=3,
                    label=(f"{m} (cos {results[m].cosine_mean:.4f})"),
                )
            ax.axhline(
                0.5 * np.log2(2 * np.pi * np.e / 12),
                color="gray",
                ls="--",
                lw=1,
                label="½log2(2πe/12) = 0.254",
            )
            ax.set_xticks(
                x, [short_layer_name(lr.layer) for lr in first.layers], rotation=90, fontsize=6
            )
            ax.set_ylabel("gap to waterfilling limit (bits/weight)")
            ax.set_title(
                f"MiniLM weight-only at {rate:g} bits/weight (measured, side info included)"
            )
            ax.legend(fontsize=8)

    return ExperimentResult(
        name="weight-only",
        description=(
            f"every linear layer of MiniLM at {rate:g} bits/weight, Σ_X from {n_sentences} "
            f"calibration sentences; gap = measured bits − waterfilling rate at the measured WMSE "
            f"(σ² = mean W²); cosine on {eval_sentences} held-out sentences"
        ),
        columns=columns,
        rows=rows,
        details={m: results[m].to_json() for m in methods},
        plot=plot,
    )


def gaussian_problem(
    a: int = 4096, n: int = 512, *, decades: float = 4.0, rotate: bool = True, seed: int = 2026
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iid N(0, 1) weights ``(a, n)`` and Σ_X with eigenvalues log-uniform over ``decades``.

    The eigenvalues are normalised to geometric mean 1; with ``rotate`` the eigenbasis is Haar
    random (QR of a Gaussian matrix), otherwise Σ_X is diagonal. Returns ``(W, Σ_X, λ)``.
    """
    rng = np.random.default_rng(seed)
    lam = np.exp(rng.uniform(0.0, np.log(10.0**decades), n))
    lam /= np.exp(np.mean(np.log(lam)))
    if rotate:
        q, r = np.linalg.qr(rng.normal(size=(n, n)))
        q *= np.sign(np.diag(r))
        sigma = (q * lam) @ q.T
        sigma = 0.5 * (sigma + sigma.T)
    else:
        sigma = np.diag(lam)
    return rng.normal(size=(a, n)), sigma, lam


def _gaussian_methods() -> dict[str, Any]:
    """Rows of the Gaussian benchmark: name → ``f(w, sigma, rate) -> WeightQuant``.

    A new method adds one entry (its row and curve follow); ``watersic-mmse`` is WaterSIC's
    scalar column code inside the vector loop with the MMSE damping and the Wiener pre-filter
    (:func:`~mmquant.weightonly.vsic.vector_sic` with ``code="entropy"``).
    """
    from mmquant.weightonly import e8sic, gptq, rtn, tcqsic, vector_sic, watersic

    return {
        "rtn": lambda w, s, r: rtn(w, s, r),
        "gptq": lambda w, s, r: gptq(w, s, r),
        "gptq-rot": lambda w, s, r: gptq(w, s, r, rotate=True, seed=1),
        "watersic": lambda w, s, r: watersic(w, s, r),
        "watersic-mmse": lambda w, s, r: vector_sic(w, s, r, code="entropy"),
        "e8sic": lambda w, s, r: e8sic(w, s, r),
        "tcqsic": lambda w, s, r: tcqsic(w, s, r),
    }


#: Rows of :func:`weight_only_gaussian` (name → ``f(w, Σ_X, rate)``); extend to add a method.
GAUSSIAN_METHODS: dict[str, Any] = _gaussian_methods()


@experiment(
    "weight-only-gaussian",
    "iid Gaussian W, Σ_X over four decades: RTN/GPTQ/GPTQ+rotation/WaterSIC/E8-SIC/trellis-SIC gap",
)
def weight_only_gaussian(
    rates: Sequence[float] = (2.0, 3.0, 4.0, 5.0),
    a: int = 4096,
    n: int = 512,
    methods: Sequence[str] | None = None,
) -> ExperimentResult:
    """Gaps of every method of :data:`GAUSSIAN_METHODS` on the problem of arXiv 2601.17187."""
    from mmquant.weightonly.tcqcoding import TCQ_NSM

    names = list(GAUSSIAN_METHODS) if methods is None else list(methods)
    for m in names:
        if m not in GAUSSIAN_METHODS:
            raise ValueError(f"unknown method {m!r}; known: {sorted(GAUSSIAN_METHODS)}")
    w, sigma, lam = gaussian_problem(a, n)
    d = np.diag(np.linalg.cholesky(sigma)) ** 2
    predicted = 0.5 * float(np.log2(d.mean() / np.exp(np.mean(np.log(d)))))
    runs = {m: (lambda r, f=GAUSSIAN_METHODS[m]: f(w, sigma, r)) for m in names}
    rows: list[list[Any]] = []
    curves: dict[str, list[float]] = {k: [] for k in runs}
    for r in rates:
        row: list[Any] = [r]
        for name, f in runs.items():
            q = f(r)
            gap = q.bits_per_weight - waterfill_rate(lam, q.wmse)
            curves[name].append(gap)
            row += [q.bits_per_weight, gap]
        both = "gptq" in curves and "watersic" in curves
        row.append(curves["gptq"][-1] - curves["watersic"][-1] if both else float("nan"))
        rows.append(row)
    columns = ["R", *[f"{k} {c}" for k in runs for c in ("bits", "gap")], "gptq−watersic"]

    def plot(path: str | Path) -> None:
        with figure(path, figsize=(6, 4), dpi=120) as (_fig, ax):
            for k, v in curves.items():
                ax.plot(rates, v, "o-", label=k)
            ecsq = 0.5 * np.log2(2 * np.pi * np.e / 12)
            ax.axhline(ecsq, color="gray", ls="--", lw=1, label="½log2(2πe/12)")
            ax.axhline(ecsq + predicted, color="gray", ls=":", lw=1, label="+ ½log2(AM/GM d_j)")
            e8 = 0.5 * np.log2(2 * np.pi * np.e * 929 / 12960)
            ax.axhline(e8, color="gray", ls="-.", lw=1, label="½log2(2πe·G(E8))")
            tcq = 0.5 * np.log2(2 * np.pi * np.e * TCQ_NSM[8])
            ax.axhline(tcq, color="gray", ls=(0, (1, 3)), lw=1, label="½log2(2πe·G(TCQ 256))")
            ax.set_xlabel("target rate (bits/weight)")
            ax.set_ylabel("gap to waterfilling (bits/weight)")
            ax.set_title(f"iid Gaussian W {a}x{n}, Σ_X over four decades")
            ax.legend(fontsize=8)

    return ExperimentResult(
        name="weight-only-gaussian",
        description=(
            f"W iid N(0,1) {a}x{n}; Σ_X eigenvalues log-uniform over four decades, Haar-rotated "
            f"(seed 2026); gap = measured bits (bitstream + side info) − waterfilling rate at the "
            f"measured WMSE; predicted GPTQ−WaterSIC = ½log2(AM/GM d_j) = {predicted:.4f}"
        ),
        columns=columns,
        rows=rows,
        details={"predicted_gptq_minus_watersic": predicted, "curves": curves},
        plot=plot,
    )
