"""Experiments of arXiv 2603.19559 (optimal scalar quantization for matrix products).

* ``scalar-density``  -- λ* for several ρ across the phase transition, constants and exact V at K=16;
* ``scalar-matmul``   -- relative error of ``AB`` with correlated pairs, every quantizer, 2..8 bits;
* ``least-squares``   -- least squares through the quantized normal equations;
* ``qk-activations``  -- queries/keys of the bundled MiniLM (in :mod:`mmquant.experiments.scalar_qk`).

Every quantizer here normalises rows by their RMS (one float16 per row), so they are compared at
the same measured rate; the INT and FP formats come from :mod:`mmquant.formats` when registered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.core import Encoded, get
from mmquant.experiments.base import ExperimentResult, experiment
from mmquant.experiments.plots import figure
from mmquant.formats.compander import DataCompander
from mmquant.theory import scalar as sc

__all__ = [
    "scalar_density",
    "scalar_matmul",
    "least_squares",
    "correlated_factors",
    "baseline_methods",
    "Method",
]

#: ``apply(x_rows, partner_rows) -> (x_hat, bits_per_entry)``; x is quantized along its last axis.
Method = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]


def _fixed(spec: str) -> Method:
    q = get(spec)

    def apply(x: np.ndarray, partner: np.ndarray) -> tuple[np.ndarray, float]:
        enc = q.encode(x)
        return q.decode(enc).astype(np.float64), enc.bits_per_entry

    apply.spec = q.spec  # type: ignore[attr-defined]
    return apply


def _data_product(bits: int) -> Method:
    dc = DataCompander(bits=bits)

    def apply(x: np.ndarray, partner: np.ndarray) -> tuple[np.ndarray, float]:
        enc: Encoded = dc.encode_with(x, dc.fit(x, partner))
        return dc.decode(enc).astype(np.float64), enc.bits_per_entry

    apply.spec = dc.spec + " (fitted with the partner)"  # type: ignore[attr-defined]
    return apply


def _best_at_rate(err: dict[str, float], rates: dict[str, float], rate: float) -> str:
    """Label of the smallest error among methods whose measured rate is ≤ ``rate`` + 0.02 bit."""
    ok = {k: v for k, v in err.items() if rates[k] <= rate + 0.02}
    return min(ok, key=ok.get)  # type: ignore[arg-type]


def _try_spec(candidates: Sequence[str]) -> str | None:
    for spec in candidates:
        try:
            q = get(spec)
            q.encode(np.ones((1, 32)))
        except (ValueError, TypeError, KeyError):
            continue
        return q.spec
    return None


def _format_specs(bits: int) -> dict[str, str | None]:
    """INT and FP formats of the formats helper at ``bits`` bits, or None if not registered."""
    fp = {4: "e2m1", 6: "e2m3", 8: "e4m3"}.get(bits)
    fp_cands = [f"fp:fmt={fp},group=0"] if fp else []  # per-row absmax scale
    return {
        "int-row": _try_spec([f"int:bits={bits},group=0"]),  # absmax per row: same side cost
        "int-g32": _try_spec([f"int:bits={bits}"]),  # the INT default (groups of 32)
        "fp": _try_spec(fp_cands),
    }


def baseline_methods(bits: int, rho: float | None = None) -> tuple[dict[str, Method], list[str]]:
    """The quantizers compared at ``bits`` bits: label → method, and the notes on skipped ones.

    Labels: ``lambda*`` (Gaussian λ* compander for ``rho``, if given), ``lambda*+lloyd`` (its
    weighted-Lloyd refinement, ``compander:refine=true``), ``data-product`` (data-driven
    compander fitted with the partner), ``lloyd-max``, ``panter-dite`` (``compander:rho=0``),
    ``uniform``, ``int-row`` (absmax INT, one float16 scale per row, the same side cost as the
    codebook quantizers), ``int-g32`` (the INT default, groups of 32: +0.5 bit/entry) and ``fp``
    (E2M1 / E2M3 / E4M3 elements at 4 / 6 / 8 bits with a float16 absmax scale per row; other
    widths have no FP format), from :mod:`mmquant.formats` when registered.
    """
    out: dict[str, Method] = {}
    if rho is not None:
        out["lambda*"] = _fixed(f"compander:bits={bits},rho={rho}")
        out["lambda*+lloyd"] = _fixed(f"compander:bits={bits},rho={rho},refine=true")
    out["data-product"] = _data_product(bits)
    out["lloyd-max"] = _fixed(f"lloydmax:bits={bits}")
    out["panter-dite"] = _fixed(f"compander:bits={bits},rho=0")
    out["uniform"] = _fixed(f"uniform:bits={bits}")
    notes = []
    for label, spec in _format_specs(bits).items():
        if spec is None:
            why = (
                "no element format of that width"
                if label == "fp" and bits not in (4, 6, 8)
                else "not registered"
            )
            notes.append(f"{label} at {bits} bits: {why}, skipped")
        else:
            out[label] = _fixed(spec)
    return out, notes


def correlated_factors(
    m: int, k: int, n: int, rho: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``A ∈ ℝ^{m×k}``, ``B ∈ ℝ^{k×n}`` whose pairs ``(A_il, B_lj)`` are N(0,1) with correlation ρ.

    Construction (a shared factor per inner index ``l``): ``Z_l, E_il, F_lj`` iid N(0,1),
    ``A_il = √|ρ|·Z_l + √(1−|ρ|)·E_il``, ``B_lj = sign(ρ)·√|ρ|·Z_l + √(1−|ρ|)·F_lj``. Every pair
    ``(A_il, B_lj)`` is standard bivariate normal with correlation ρ and the pairs are iid over
    ``l`` (for fixed ``i, j``), the model of THEORY.md §5; entries of one column of A (or row of B)
    are correlated with each other (|ρ|), which does not change ``E‖AB − ÂB̂‖²``.
    """
    z = rng.standard_normal(k)
    a = math.sqrt(abs(rho)) * z[None, :] + math.sqrt(1 - abs(rho)) * rng.standard_normal((m, k))
    b = math.copysign(math.sqrt(abs(rho)), rho) * z[:, None] + math.sqrt(
        1 - abs(rho)
    ) * rng.standard_normal((k, n))
    return a, b


# ---------------------------------------------------------------------------------------------
# scalar-density
# ---------------------------------------------------------------------------------------------
@experiment("scalar-density", "product-optimal point density λ* across the phase transition")
def scalar_density(
    rhos: Sequence[float] = (0.0, 0.3, 0.5, 1 / math.sqrt(3), 0.7, 0.8, 0.95),
    levels: int = 16,
) -> ExperimentResult:
    """λ*(u) ∝ exp(−u²/6)((1−ρ²)+ρ²u²)^{1/3} for several ρ, its peaks, C*(ρ) and the exact V.

    For each ρ: C*(ρ) = J(ρ)³/12, the Panter–Dite product cost (√3π/2)(1+2ρ²), the gain in dB, the
    modes of λ* (0 below |ρ| = 1/√3, ±√(3 − 1/ρ²) above), and the exact per-pair V (quadrature,
    same quantizer on both sides) at ``levels`` levels of the λ* compander, Lloyd–Max and the best
    uniform quantizer, with the high-resolution prediction 2C*/K².
    """
    cols = [
        "rho",
        "C*",
        "PD cost",
        "gain dB",
        "peak u",
        f"V λ* K={levels}",
        "V hi-res 2C*/K²",
        f"V Lloyd–Max K={levels}",
        f"V uniform K={levels}",
    ]
    lm = sc.lloyd_max_gaussian(levels)
    un = sc.uniform_gaussian(levels)
    rows: list[list[Any]] = []
    u = np.linspace(-5, 5, 1001)
    curves = {}
    for rho in rhos:
        cstar = sc.optimal_constant_gaussian(rho)
        comp = sc.gaussian_product_compander(rho, levels)
        v_comp = sc.gaussian_product_error(comp, comp, rho)[0]
        v_lm = sc.gaussian_product_error(lm, lm, rho)[0]
        v_un = sc.gaussian_product_error(un, un, rho)[0]
        peaks = sc.density_peaks(rho)
        rows.append(
            [
                round(float(rho), 6),
                cstar,
                sc.panter_dite_product_cost(rho),
                round(sc.gain_over_panter_dite_db(rho), 12),
                max(peaks),
                v_comp,
                2 * cstar / levels**2,
                v_lm,
                v_un,
            ]
        )
        curves[f"{rho:.4f}"] = sc.gaussian_pair_density(u, rho)
    details = {
        "phase_transition_rho": sc.PHASE_TRANSITION_RHO,
        "levels": levels,
        "u": u,
        "lambda_star": curves,
    }

    def plot(path: str | Path) -> None:
        with figure(path, figsize=(7, 4.5), dpi=120) as (_fig, ax):
            for rho in rhos:
                lam = curves[f"{rho:.4f}"]
                (line,) = ax.plot(u, lam, label=f"ρ = {rho:.3g}")
                pk = np.array(sc.density_peaks(rho))
                ax.plot(pk, sc.gaussian_pair_density(pk, rho), "o", color=line.get_color())
            ax.set_xlabel("u (units of σ)")
            ax.set_ylabel("λ*(u)")
            ax.set_title("Product-optimal point density; dots: modes (two above |ρ| = 1/√3)")
            ax.legend(fontsize=8)

    return ExperimentResult(
        "scalar-density",
        f"λ* for Gaussian pairs, C*(ρ), gain over Panter–Dite, exact V at K = {levels} (quadrature)",
        cols,
        rows,
        details,
        plot,
    )


# ---------------------------------------------------------------------------------------------
# scalar-matmul
# ---------------------------------------------------------------------------------------------
def _gaussian_codebook(label: str, bits: int, rho: float) -> sc.ScalarCodebook | None:
    k = 1 << bits
    if label == "lambda*":
        return sc.gaussian_product_compander(rho, k)
    if label == "panter-dite":
        return sc.gaussian_product_compander(0.0, k)
    if label == "lloyd-max":
        return sc.lloyd_max_gaussian(k)
    if label == "uniform":
        return sc.uniform_gaussian(k)
    return None


def _hires_constant(label: str, rho: float) -> float | None:
    if label == "lambda*":
        return sc.optimal_constant_gaussian(rho)
    if label in ("panter-dite", "lloyd-max"):  # both have the density φ^{1/3} as K → ∞
        return sc.panter_dite_product_cost(rho)
    return None


@experiment("scalar-matmul", "relative error of AB with correlated pairs, 2..8 bits")
def scalar_matmul(
    rhos: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
    m: int = 128,
    k: int = 256,
    n: int = 128,
    seed: int = 0,
    exact_max_bits: int = 8,
    exact_for: Sequence[str] = ("lambda*", "lloyd-max"),
) -> ExperimentResult:
    """Relative Frobenius error ``‖AB − ÂB̂‖_F/‖AB‖_F`` of every quantizer, with predictions.

    Data: :func:`correlated_factors` (``A`` m×k, ``B`` k×n, pairs with correlation ρ; seed fixed).
    ``A`` is quantized along its rows, ``B`` along its columns (``Bᵀ`` along rows), all with a
    float16 RMS per row. Predictions (per pair, σ = 1): ``E‖AB − ÂB̂‖² = m·n·(k·V + k(k−1)·β²)``
    with the exact V and β of the Gaussian codebook (quadrature; for the methods in ``exact_for``
    up to ``exact_max_bits``), and the high-resolution
    ``V ≈ 2C/K²`` (C = C*(ρ) for λ*, (√3π/2)(1+2ρ²) for Lloyd–Max and Panter–Dite, β = 0); both
    divided by the measured ``‖AB‖_F²``. ``best ≤ rate``: the best method among those whose
    measured rate does not exceed the λ* compander's (+0.02 bit): INT with groups of 32 costs
    0.5 bit/entry more, the data-driven codebook 32·2^bits bits per matrix.
    """
    rng = np.random.default_rng(seed)
    pending: list[tuple[list[Any], dict[str, float], list[Any]]] = []
    records: list[dict[str, Any]] = []
    notes: set[str] = set()
    labels_seen: list[str] = []
    nan = float("nan")
    for rho in rhos:
        a, b = correlated_factors(m, k, n, rho, rng)
        c = a @ b
        c2 = float(np.sum(c * c))
        for bb in bits:
            methods, nts = baseline_methods(bb, rho)
            notes.update(nts)
            err: dict[str, float] = {}
            for label, meth in methods.items():
                a_hat, ra = meth(a, b.T)
                bt_hat, rb = meth(b.T, a)
                e2 = float(np.sum((c - a_hat @ bt_hat.T) ** 2))
                rec: dict[str, Any] = {
                    "rho": rho,
                    "bits": bb,
                    "method": label,
                    "spec": getattr(meth, "spec", label),
                    "rate": 0.5 * (ra + rb),
                    "rel_error": math.sqrt(e2 / c2),
                }
                cb = _gaussian_codebook(label, bb, rho) if label in exact_for else None
                if cb is not None and bb <= exact_max_bits:
                    v, beta = sc.gaussian_product_error(cb, cb, rho)
                    pred = m * n * (k * v + k * (k - 1) * beta * beta)
                    rec.update(V=v, beta=beta, pred_exact=math.sqrt(pred / c2))
                cst = _hires_constant(label, rho)
                if cst is not None:
                    rec["pred_hires"] = math.sqrt(m * n * k * 2 * cst * 4.0**-bb / c2)
                records.append(rec)
                err[label] = rec["rel_error"]
                if label not in labels_seen:
                    labels_seen.append(label)
            lam = next(r for r in records[::-1] if r["method"] == "lambda*")
            rates = {r["method"]: r["rate"] for r in records[-len(methods) :]}
            best = _best_at_rate(err, rates, lam["rate"])
            pending.append(
                ([rho, bb, lam["rate"]], err, [lam.get("pred_exact", nan), lam["pred_hires"], best])
            )
    cols = ["rho", "bits", "rate", *labels_seen, "λ* pred exact", "λ* pred hi-res", "best ≤ rate"]
    rows = [[*pre, *[err.get(lb, nan) for lb in labels_seen], *post] for pre, err, post in pending]
    details = {
        "sizes": {"m": m, "k": k, "n": n},
        "seed": seed,
        "records": records,
        "notes": sorted(notes),
    }

    def plot(path: str | Path) -> None:
        nr = len(rhos)
        ncol = min(4, nr)
        nrow = -(-nr // ncol)
        size = (4 * ncol, 3.2 * nrow)
        with figure(path, nrow, ncol, figsize=size, squeeze=False, dpi=110) as (fig, axes):
            for ax, rho in zip(axes.ravel(), rhos):
                for label in labels_seen:
                    rs = [r for r in records if r["rho"] == rho and r["method"] == label]
                    ax.semilogy(
                        [r["bits"] for r in rs], [r["rel_error"] for r in rs], "o-", label=label
                    )
                    if label == "lambda*":
                        ax.semilogy(
                            [r["bits"] for r in rs], [r["pred_hires"] for r in rs], "k--", lw=1
                        )
                ax.set_title(f"ρ = {rho}")
                ax.set_xlabel("bits per entry (codes)")
                ax.set_ylabel("‖AB − ÂB̂‖/‖AB‖")
            for ax in axes.ravel()[nr:]:
                ax.axis("off")
            axes[0, 0].legend(fontsize=7)
            fig.suptitle("scalar quantizers for AB with correlated pairs (dashed: λ* high-res)")

    return ExperimentResult(
        "scalar-matmul",
        f"‖AB−ÂB̂‖_F/‖AB‖_F, A {m}×{k}, B {k}×{n}, pairs correlated with ρ (shared factor), "
        "per-row float16 RMS",
        cols,
        rows,
        details,
        plot,
    )


# ---------------------------------------------------------------------------------------------
# least-squares
# ---------------------------------------------------------------------------------------------
@experiment("least-squares", "least squares through quantized normal equations")
def least_squares(
    rhos: Sequence[float] = (0.0, 0.5, 0.8),
    bits: Sequence[int] = (3, 4, 5, 6),
    n_obs: int = 4096,
    dim: int = 32,
    noise: float = 0.1,
    trials: int = 5,
    seed: int = 0,
) -> ExperimentResult:
    """Least squares ``min_x ‖Ax − y‖`` solved from quantized ``A`` and ``y``.

    Setup: rows of ``A ∈ ℝ^{N×d}`` (N = ``n_obs``, d = ``dim``) iid N(0, Σ) with equicorrelated
    Σ = (1−ρ)I + ρ11ᵀ, so every pair ``(A_li, A_lj)`` of the Gram matrix ``AᵀA`` has correlation
    ρ; ``x* ~ N(0, I/d)``, ``y = Ax* + noise·ε``. The columns of ``A`` and ``y`` (length N) are
    quantized along N (each with a float16 RMS); ``x̂ = (ÂᵀÂ)⁻¹Âᵀŷ``. Reported (means over
    ``trials`` independent problems): the relative
    error ``‖x̂ − x_ls‖/‖x_ls‖`` against the unquantized solution ``x_ls`` (one column per method),
    and the relative Frobenius error of the Gram matrix ``‖ÂᵀÂ − AᵀA‖/‖AᵀA‖`` (the product the
    λ* compander is designed for; all methods in ``details``). The λ* compander uses the ρ of the
    columns of A. The two criteria need not agree: the solution error weighs the Gram error by
    ``(AᵀA)⁻¹``, i.e. mostly along the small eigenvalues ``1−ρ``, and is sensitive to the bias β.
    """
    rng = np.random.default_rng(seed)
    pending: list[tuple[list[Any], dict[str, float], list[Any]]] = []
    records: list[dict[str, Any]] = []
    notes: set[str] = set()
    labels_seen: list[str] = []
    nan = float("nan")
    for rho in rhos:
        cov = (1 - rho) * np.eye(dim) + rho * np.ones((dim, dim))
        lchol = np.linalg.cholesky(cov)
        problems = []
        for _ in range(trials):
            a = rng.standard_normal((n_obs, dim)) @ lchol.T
            xstar = rng.standard_normal(dim) / math.sqrt(dim)
            y = a @ xstar + noise * rng.standard_normal(n_obs)
            x_ls = np.linalg.lstsq(a, y, rcond=None)[0]
            at = np.vstack([a.T, y[None, :]])  # d+1 rows of length N, quantized along N
            problems.append((a.T @ a, x_ls, at))
        for bb in bits:
            methods, nts = baseline_methods(bb, rho)
            notes.update(nts)
            err: dict[str, float] = {}
            gram: dict[str, float] = {}
            for label, meth in methods.items():
                xe, ge, rates = [], [], []
                for g, x_ls, at in problems:
                    at_hat, rate = meth(at, at)
                    ah, yh = at_hat[:dim].T, at_hat[dim]
                    gh = ah.T @ ah
                    try:
                        xh = np.linalg.solve(gh, ah.T @ yh)
                        xe.append(float(np.linalg.norm(xh - x_ls) / np.linalg.norm(x_ls)))
                    except np.linalg.LinAlgError:
                        xe.append(float("inf"))
                    ge.append(float(np.linalg.norm(gh - g) / np.linalg.norm(g)))
                    rates.append(rate)
                err[label] = float(np.mean(xe))
                gram[label] = float(np.mean(ge))
                records.append(
                    {
                        "rho": rho,
                        "bits": bb,
                        "method": label,
                        "spec": getattr(meth, "spec", label),
                        "rate": float(np.mean(rates)),
                        "x_rel_error": err[label],
                        "x_rel_error_trials": xe,
                        "gram_rel_error": gram[label],
                    }
                )
                if label not in labels_seen:
                    labels_seen.append(label)
            rates = {r["method"]: r["rate"] for r in records[-len(methods) :]}
            best = _best_at_rate(err, rates, rates["lambda*"])
            best_g = _best_at_rate(gram, rates, rates["lambda*"])
            pending.append(([rho, bb], err, [best, gram["lambda*"], best_g]))
    cols = ["rho", "bits", *labels_seen, "best ≤ rate", "Gram err λ*", "best Gram ≤ rate"]
    rows = [[*pre, *[err.get(lb, nan) for lb in labels_seen], *post] for pre, err, post in pending]
    details = {
        "n_obs": n_obs,
        "dim": dim,
        "noise": noise,
        "trials": trials,
        "seed": seed,
        "records": records,
        "notes": sorted(notes),
    }

    def plot(path: str | Path) -> None:
        with figure(path, 1, len(rhos), figsize=(4 * len(rhos), 3.4), squeeze=False, dpi=110) as (
            _fig,
            axes,
        ):
            for ax, rho in zip(axes[0], rhos):
                for label in labels_seen:
                    rs = [r for r in records if r["rho"] == rho and r["method"] == label]
                    ax.semilogy(
                        [r["bits"] for r in rs], [r["x_rel_error"] for r in rs], "o-", label=label
                    )
                ax.set_title(f"ρ = {rho}")
                ax.set_xlabel("bits per entry (codes)")
                ax.set_ylabel("‖x̂ − x_ls‖/‖x_ls‖")
            axes[0, 0].legend(fontsize=7)

    return ExperimentResult(
        "least-squares",
        f"least squares from quantized A ({n_obs}×{dim}, equicorrelated columns) and y: "
        "‖x̂ − x_ls‖/‖x_ls‖",
        cols,
        rows,
        details,
        plot,
    )
