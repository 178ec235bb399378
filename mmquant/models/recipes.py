"""Covariance-aware codes for MiniLM's activations and queries/keys, and the W4A4 recipes.

What reaches the output of a layer ``y = Wx`` is ``W(x − x̂)``, not ``x − x̂``: the activation
code should minimise ``(x − x̂)ᵀ Σ_W (x − x̂)`` (``Σ_W = WᵀW/rows``), and for queries and keys
the logit error, ``(q − q̂)ᵀ Σ_K (q − q̂)`` and ``(k − k̂)ᵀ Σ_Q (k − k̂)``. This module builds such
codes from the two covariances, offline:

1. **Transforms folded into the weights** where the algebra allows it, chosen by the theory:
   for a pair ``(Σ_A, Σ_B)`` (vector ``a`` coded with its error weighted by ``Σ_B``),
   :func:`balance` returns ``T`` with ``TᵀΣ_A T = T⁻¹Σ_B T⁻ᵀ = diag(√μ)`` (``μ`` the
   eigenvalues of ``Σ_A Σ_B``): coordinates of ``aT`` are uncorrelated and each carries its own
   error weight ``√μ_i``, so a scalar code per coordinate with waterfilled rates reaches the
   covariance-aware limit of :mod:`mmquant.models.limits` up to the scalar code's own loss.

   * queries/keys of head ``h``: ``q' = qT``, ``k' = kT⁻ᵀ`` (``q'k'ᵀ = qkᵀ``), folded into the
     rows of ``W_q``, ``b_q`` (``Tᵀ``) and ``W_k``, ``b_k`` (``T⁻¹``) of that head: free;
   * context of head ``h`` (input of ``attention.output.dense``): ``c' = cT``, folded into
     ``W_v``, ``b_v`` (``Tᵀ``, the attention rows sum to 1) and the head's columns of ``W_o``
     (``T⁻ᵀ``): free;
   * LayerNorm outputs (input of query/key/value and ``intermediate.dense``) and GELU outputs
     (input of ``output.dense``): nothing folds through the LayerNorm (post-LN: its output is
     also the residual) or the GELU, and a dense online transform would cost as much as the
     layer, so these keep their basis; only the per-channel code (step 2) sees ``Σ_W``.

2. **Rate allocation by waterfilling on the real data**: :class:`ChannelCode`, a static uniform
   scalar code per channel (offset, clipping range and 0–8 bits per channel fitted on the
   calibration inputs, no per-token side information), with the bits given greedily to the
   channel whose *weighted* error (weight ``Σ_W[i, i]``, or ``√μ_i`` after a balancing
   transform) drops most: the integer, measured form of reverse waterfilling. Massive
   activation channels get 8 bits, channels that meet small weights get few or none.

3. **Weights by WaterSIC** against the covariance of the (transformed, quantized) inputs
   (third round: by trellis-SIC, ``weight_method="tcqsic"``, the default).

Second round (default, ``aware_recipe(codes="token")``): the inputs of the linear layers are
coded by :mod:`mmquant.models.actcodes` instead — an online transform (dense balancing
transform of ``(Σ_X, Σ_W)`` for the LayerNorm outputs, a Hadamard rotation for the context and
the GELU outputs), a per-token 8-bit scale and a :class:`ChannelCode` with waterfilled bits on
the transformed coordinates. On 32 held-out sentences at 4.5 bits (activations of one kind
quantized at a time, ``1 − cos``): GELU outputs 5.5e-2 without a rotation, 2.4e-3 with one;
LayerNorm outputs of query/key/value 4.6e-3 (identity) → 2.6e-3 (balancing); static codes after
the same transforms were worse at every kind of input. The static codes of the first round stay
available with ``codes="static"``. :class:`ChannelCode`, :func:`allocate_bits` and
:func:`balance` live in :mod:`mmquant.models.channelcode` (re-exported here).

Fourth round (the default: ``act_code="ecsq"``, ``qk_code="ecsq"``): the inner codes are
entropy-coded uniform scalar codes (:mod:`mmquant.models.ecsqcode`, steps ``Δ0/√wᵢ``, static
per-coordinate tables with escapes, 64-token rANS messages per site for the activations and per
head for queries/keys), their rates counted as they code. At 4.5 bits on 64 + 64 sentences
(trellis-SIC weights, rates measured on the evaluation sentences: weights 4.50, activations
4.42, Q/K 4.47; ``benchmarks/bench_w4a4_targets.py``): 1 − cos 4.67e-3, logit error 3.2e-3,
recall@1 equal to the unquantized model's (channel codes: 1.02e-2, 1.05e-2, one topic lost).
With every activation token its own message (``act_block=1``: 64 bits of coder state per token
counted) 4.96e-3 and 3.5e-3, and one topic lost. Trellis-coded rate classes
(``act_code="tcq"``, ``qk_code="tcq"``, :mod:`mmquant.models.tokentrellis`: fixed rate, no
entropy coder) reach 6.07e-3 and 6.90e-3 and are about 4× slower to fit and run.

:func:`aware_recipe` builds the whole quantized model;
:func:`mmquant.models.baselines.baseline_recipe` the registered codes of the issue's table on the
same footing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmquant.models.capture import Capture, calibration_capture, capture
from mmquant.models.channelcode import (
    ChannelCode,
    allocate_bits,
    balance,
)
from mmquant.models.limits import weight_covariance
from mmquant.models.minilm import MiniLM
from mmquant.models.quantized import quantize_model
from mmquant.validation import check_choice, check_float

__all__ = [
    "ChannelCode",
    "allocate_bits",
    "balance",
    "fold_transforms",
    "watersic_weights",
    "Recipe",
    "aware_recipe",
    "measured_rates",
    "tcq_qk_codes",
]


#: Calibration sentences on which ``act_allocation="sensitivity"`` measures the gains.
SENSITIVITY_SENTENCES = 16

#: Labels of the weight-only methods in recipe names.
WEIGHT_LABELS = {"watersic": "WaterSIC", "tcqsic": "trellis-SIC", "e8sic": "E8-SIC"}


def _heads(model: MiniLM) -> tuple[int, int]:
    return model.config.num_heads, model.config.head_dim


def fold_transforms(model: MiniLM, cap: Capture, *, damp: float = 1e-9) -> MiniLM:
    """The same function as ``model`` with the balancing transforms folded into its weights.

    Per layer and head: ``T_qk = balance(Σ_Q, Σ_K)`` into the head's rows of ``W_q, b_q``
    (``Tᵀ``) and ``W_k, b_k`` (``T⁻¹``); ``T_c = balance(Σ_C, Σ_{W_o})`` into the rows of
    ``W_v, b_v`` (``Tᵀ``) and the head's columns of ``W_o`` (``T⁻ᵀ``). Covariances come from
    ``cap`` (a capture of ``model``). The result computes the same embeddings up to rounding.
    """
    nh, hd = _heads(model)
    w = {k: np.asarray(v, np.float64).copy() for k, v in model.weights.items()}
    for i in range(model.config.num_layers):
        p = f"encoder.layer.{i}."
        sq, sk = p + "attention.self.query", p + "attention.self.key"
        sv, so = p + "attention.self.value", p + "attention.output.dense"
        ctx = np.asarray(cap.inputs[so], np.float64)
        for h in range(nh):
            rows = slice(h * hd, (h + 1) * hd)
            qh, kh = (np.asarray(a, np.float64) for a in cap.head(i, h))
            t, ti, _ = balance(qh.T @ qh / len(qh), kh.T @ kh / len(kh), damp=damp)
            w[sq + ".weight"][rows] = t.T @ w[sq + ".weight"][rows]
            w[sq + ".bias"][rows] = t.T @ w[sq + ".bias"][rows]
            w[sk + ".weight"][rows] = ti @ w[sk + ".weight"][rows]
            w[sk + ".bias"][rows] = ti @ w[sk + ".bias"][rows]
            c = ctx[:, rows]
            wo = w[so + ".weight"][:, rows]
            t, ti, _ = balance(c.T @ c / len(c), wo.T @ wo / wo.shape[0], damp=damp)
            w[sv + ".weight"][rows] = t.T @ w[sv + ".weight"][rows]
            w[sv + ".bias"][rows] = t.T @ w[sv + ".bias"][rows]
            w[so + ".weight"][:, rows] = wo @ ti.T
    out = {}
    for k, v in w.items():
        a = np.ascontiguousarray(v, dtype=model.dtype)
        a.flags.writeable = False
        out[k] = a
    return model.replace(weights=out, description="fp, balancing transforms folded")


def watersic_weights(
    model: MiniLM,
    covariances: Mapping[str, np.ndarray],
    rate: float,
    *,
    damp: float = 1e-2,
    method: str = "watersic",
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """WaterSIC of every linear layer of ``model`` against ``covariances[name]`` (Σ_X).

    ``method`` picks another weight-only method of
    :data:`mmquant.weightonly.metrics.METHODS` (e.g. ``"tcqsic"``, trellis-SIC) with the same
    Σ_X and damping. Returns the reconstructions ``name -> Ŵ`` and the measured bits per
    weight of each layer (bitstream and side information).
    """
    from mmquant.weightonly import quantize_layer
    from mmquant.weightonly.metrics import METHODS

    check_choice(method, "method", METHODS)

    r = check_float(rate, "rate", 0.0, lo_open=True)
    w_hat: dict[str, np.ndarray] = {}
    bits: dict[str, float] = {}
    for name in model.linear_names:
        w = np.asarray(model.weights[name + ".weight"], np.float64)
        q = quantize_layer(method, w, np.asarray(covariances[name], np.float64), r, damp=damp)
        w_hat[name] = q.w_hat
        bits[name] = float(q.bits_per_weight)
    return w_hat, bits


@dataclass(frozen=True, eq=False)
class Recipe:
    """A quantized model and the measured rates of its three kinds of codes.

    Attributes
    ----------
    name : str
        Label of the recipe (``"weights / activations + Q/K"``).
    model : MiniLM
        The quantized model (run it with :func:`~mmquant.models.quantized.evaluate`).
    weight_bits, act_bits, qk_bits : float
        Measured bits per weight, per activation entry and per query/key entry (means over all
        entries; NaN where that part is not quantized).
    act_codes, qk_codes : mapping
        The per-layer codes (empty for registered quantizers).
    reference : MiniLM or None
        The unquantized model in the recipe's basis (transforms folded), if it has one.
    """

    name: str
    model: MiniLM
    weight_bits: float
    act_bits: float
    qk_bits: float
    act_codes: Mapping[str, Any] = field(default_factory=dict)
    qk_codes: Mapping[Any, Any] = field(default_factory=dict)
    reference: MiniLM | None = None


def _mean_bits(bits: Mapping[str, float], model: MiniLM) -> float:
    if not bits:
        return float("nan")
    sizes = {n: model.weights[n + ".weight"].size for n in bits}
    return float(sum(bits[n] * sizes[n] for n in bits) / sum(sizes.values()))


@dataclass(frozen=True, eq=False)
class ScaledCode:
    """A registered code on per-channel scaled data: ``x̂ = Q(x·d) / d``.

    ``d`` is chosen offline from the covariances (:func:`aware_scales`); the multiplication is
    elementwise (fused with the quantizer's own pass) and ``1/d`` folds into the columns of the
    layer's weight. ``bits_per_entry`` is the code's measured rate on calibration data.
    """

    scale: np.ndarray
    spec: str
    bits_per_entry: float

    def quantize(self, x: Any) -> np.ndarray:
        """Code and decode ``x`` (``[tokens, channels]``), in its dtype."""
        from mmquant.core import get

        a = np.asarray(x)
        y = get(self.spec).quantize((a * self.scale).astype(np.float32))
        return (np.asarray(y, np.float64) / self.scale).astype(a.dtype, copy=False)


@dataclass(frozen=True, eq=False)
class OnlineTransformCode:
    """``x̂ = Q(x T) T⁻¹`` with a dense ``T`` applied online (not folded: costs ``n²`` per token)."""

    t: np.ndarray
    t_inv: np.ndarray
    inner: Any

    @property
    def bits_per_entry(self) -> float:
        """Measured rate of the inner code."""
        return float(self.inner.bits_per_entry)

    def quantize(self, x: Any) -> np.ndarray:
        """Code and decode ``x`` (``[tokens, channels]``), in its dtype."""
        a = np.asarray(x)
        z = self.inner.quantize(np.asarray(a, np.float64) @ self.t)
        return (np.asarray(z, np.float64) @ self.t_inv).astype(a.dtype, copy=False)


def aware_scales(w_weights: np.ndarray, x_var: np.ndarray) -> np.ndarray:
    """``d_i = (w_i / v_i)^{1/4}`` (geometric mean 1): the best diagonal scaling for a code whose
    error is white with the data's mean power (Cauchy–Schwarz: ``(Σ d²v)(Σ w/d²) ≥ (Σ√(vw))²``).
    """
    w = np.clip(np.asarray(w_weights, np.float64), 1e-30, None)
    v = np.clip(np.asarray(x_var, np.float64), 1e-30, None)
    d = (w / v) ** 0.25
    return d / np.exp(np.mean(np.log(d)))


#: E8 codes with shipped designs (no design search at first use), highest rate first.
E8_SPECS = ("e8:group=32", "e8:q=13,group=32", "e8:q=7,group=32")


def e8_spec(rate: float, sample: np.ndarray) -> tuple[str, float]:
    """The E8 code of :data:`E8_SPECS` with the most bits per entry ``≤ rate`` on ``sample``."""
    from mmquant.core import get

    x = np.asarray(sample, np.float32)
    for spec in E8_SPECS:
        bits = get(spec).encode(x).bits_per_entry
        if bits <= rate:
            return spec, float(bits)
    raise ValueError(f"no E8 code of at most {rate} bits per entry (the least is {bits:.3f})")


def _weighted_error(x: np.ndarray, x_hat: np.ndarray, sigma_w: np.ndarray) -> float:
    e = np.asarray(x_hat, np.float64) - x
    return float(np.sum((e @ sigma_w) * e))


def _fit_act_code(
    x: np.ndarray, sigma_w: np.ndarray, rate: float, split: int, *, static: bool
) -> Any:
    """The better (on held-out calibration tokens) of scaled e8 and the static channel code."""
    w = np.clip(np.diag(sigma_w), 0.0, None)
    cands: list[tuple[float, Any]] = []
    spec, bits = e8_spec(rate, x[:split])
    sc = ScaledCode(aware_scales(w, np.mean(x * x, axis=0)), spec, bits)
    cands.append((_weighted_error(x[split:], sc.quantize(x[split:]), sigma_w), sc))
    if static:
        cc = ChannelCode.fit(x[:split], w, rate)
        cands.append((_weighted_error(x[split:], cc.quantize(x[split:]), sigma_w), "channel"))
    best = min(cands, key=lambda c: c[0])[1]
    return ChannelCode.fit(x, w, rate) if best == "channel" else best


#: Tokens per rANS message of the ECSQ activation codes (a 64-token chunk of one layer input).
ACT_BLOCK = 64
#: Tokens per rANS message of the ECSQ query/key codes (a key-cache page of one head).
QK_BLOCK = 64
#: Bits below ``qk_rate`` that the ECSQ query/key codes aim at (on 32 + 32 sentences the
#: evaluation tokens cost 0.023 bits more than the held-out calibration tokens).
QK_MARGIN = 0.05


def _ecsq_qk(mt: MiniLM, cap: Capture, rate: float, block: int) -> dict:
    """ECSQ codes of every head's queries and keys, one ``Δ0`` for all (error weights: the
    diagonal of the other side's covariance)."""
    from mmquant.models.ecsqcode import fit_joint

    nh, _ = _heads(mt)
    keys, data, wts = [], [], []
    for i in range(mt.config.num_layers):
        for h in range(nh):
            qh, kh = (np.asarray(a, np.float64) for a in cap.head(i, h))
            for which, d, other in (("q", qh, kh), ("k", kh, qh)):
                keys.append((i, which, h))
                data.append(d)
                wts.append(np.clip(np.mean(other * other, axis=0), 0.0, None))
    return dict(zip(keys, fit_joint(data, wts, rate, block=block)))


def measured_rates(recipe: Recipe) -> dict[str, tuple[float, float, int]]:
    """Bits per entry that the recipe's ECSQ codes have measured since their meters were reset.

    Returns ``{"act": (mean, max over codes, entries), "qk": ...}`` for the parts coded by
    :class:`~mmquant.models.ecsqcode.ECSQCode` s (scales included; mean over all entries coded).
    Reset with :func:`~mmquant.models.ecsqcode.reset_meters` before an evaluation.
    """
    from mmquant.models.ecsqcode import measured_rate

    return {
        "act": measured_rate(recipe.act_codes.values()),
        "qk": measured_rate(recipe.qk_codes.values()),
    }


def tcq_qk_codes(
    cap: Capture, layers: int, heads: int, rate: float
) -> tuple[dict[tuple[int, str], Any], int, int]:
    """Trellis-coded query/key codes: per layer, one code for all heads of the queries and one
    for the keys (``[tokens, heads·head_dim]``), bits waterfilled jointly over both with the
    error weights ``diag Σ_K`` (queries) and ``diag Σ_Q`` (keys) of each head.

    Returns ``({(layer, "q" | "k"): code}, total bits per token, entries per token)``.
    """
    from mmquant.models.tokentrellis import CodeCurves

    out: dict[tuple[int, str], Any] = {}
    total = entries = 0
    for i in range(layers):
        data: dict[str, list] = {"q": [], "k": []}
        wts: dict[str, list] = {"q": [], "k": []}
        for h in range(heads):
            qh, kh = (np.asarray(a, np.float64) for a in cap.head(i, h))
            data["q"].append(qh)
            data["k"].append(kh)
            wts["q"].append(np.clip(np.diag(kh.T @ kh / len(kh)), 0.0, None))
            wts["k"].append(np.clip(np.diag(qh.T @ qh / len(qh)), 0.0, None))
        cv = {w: CodeCurves.measure(np.concatenate(data[w], axis=1)) for w in "qk"}
        ws = [np.concatenate(wts[w]) * cv[w].std ** 2 for w in "qk"]
        n = sum(c.mean.size for c in cv.values())
        alloc = allocate_bits([cv["q"].curve, cv["k"].curve], ws, int(n * rate))
        for w, b in zip("qk", alloc):
            out[(i, w)] = cv[w].code(b)
            total += int(b.sum())
            entries += b.size
    return out, total, entries


def aware_recipe(
    model: MiniLM,
    rate: float = 4.5,
    *,
    act_rate: float | None = None,
    qk_rate: float | None = None,
    n_sentences: int = 64,
    damp: float = 1e-2,
    weights: bool = True,
    online: bool = False,
    codes: str = "token",
    weight_method: str = "tcqsic",
    act_allocation: str = "site",
    act_code: str | None = None,
    qk_code: str = "ecsq",
    act_block: int = ACT_BLOCK,
    qk_block: int = QK_BLOCK,
    qk_margin: float = QK_MARGIN,
) -> Recipe:
    """The covariance-aware recipe: folded transforms, waterfilled/scaled codes, WaterSIC.

    Parameters
    ----------
    model : MiniLM
        Unquantized model.
    rate : float
        Target bits per weight (WaterSIC's measured rate); also the default of the others.
    act_rate, qk_rate : float, optional
        Bits per activation entry and per query/key entry (measured, never above).
    n_sentences : int
        Calibration sentences (``"calibration"`` half of the pool); the codes of each layer
        input are chosen on the tokens of the second half of them and fitted on all.
    damp : float
        WaterSIC's relative damping of Σ_X.
    weights : bool
        Quantize the weights (False: activations and Q/K only).
    online : bool
        Also transform the LayerNorm outputs (inputs of query/key/value and
        ``intermediate.dense``) by the dense balancing ``T`` of ``(Σ_X, Σ_W)`` *online*
        (``n²`` multiply-adds per token: a third of the QKV projection, a quarter of
        ``intermediate.dense``), which nothing folds in this post-LN model (``codes="static"``).
    codes : {"token", "static"}
        Activation codes: ``"token"`` the per-token-scaled codes after online transforms of
        :func:`mmquant.models.actcodes.token_codes`; ``"static"`` the first round's choice per
        layer between a static :class:`ChannelCode` and a :class:`ScaledCode` (E8).
    weight_method : str
        Weight-only method of :func:`watersic_weights` (``"watersic"``, ``"tcqsic"`` ...),
        run against Σ of the coded inputs. Default trellis-SIC: at 4.5 bits on 64 held-out
        sentences 1 − cos 1.10e-2 → 1.02e-2 and logit error 1.08e-2 → 1.05e-2 against WaterSIC
        (``benchmarks/bench_w4a4_targets.py --weights watersic``).
    act_allocation : {"site", "joint", "sensitivity"}
        Bits of the token codes: ``act_rate`` at every input, or one waterfilling across all
        inputs (``allocation`` of :func:`~mmquant.models.actcodes.token_codes`; mean ≤
        ``act_rate``) on relative product errors (``"joint"``) or on them times each input's
        measured sensitivity (:func:`~mmquant.models.actcodes.sensitivity_gains` on the first
        :data:`SENSITIVITY_SENTENCES` calibration sentences). Measured at 4.5 bits with WaterSIC
        weights (64 held-out sentences, 1 − cos / logit error): site 1.10e-2 / 1.08e-2, joint
        1.42e-2 / 1.47e-2, sensitivity 1.22e-2 / 9.5e-3 — hence the default ``"site"``.
    act_code : {"channel", "ecsq", "tcq"}, optional
        Inner code of the token codes (``codes="token"``, ``act_allocation="site"`` for the
        last two; default ``"ecsq"`` where those hold, else ``"channel"``): the fixed-rate :class:`ChannelCode`; the entropy-coded
        :class:`~mmquant.models.ecsqcode.ECSQCode` (rates measured as it codes:
        :func:`measured_rates`); or trellis codes per rate class
        (:mod:`mmquant.models.tokentrellis`). Measured with the same ``qk_code`` (64 held-out
        sentences, 64 calibration sentences, trellis-SIC weights), 1 − cos / logit error: at 4.5
        bits channel 1.02e-2 / 1.05e-2, tcq 6.07e-3 / 6.90e-3; at 3 bits channel 6.17e-2 /
        4.42e-2, tcq 3.97e-2 / 2.91e-2 (ECSQ: module docstring).
    qk_code : {"channel", "ecsq", "tcq"}
        Query/key codes: :class:`ChannelCode` s with bits waterfilled across the heads of each
        layer; :class:`~mmquant.models.ecsqcode.ECSQCode` s with one water level ``Δ0`` for
        all heads of all layers (:func:`~mmquant.models.ecsqcode.fit_joint`; the logit error
        is one sum over layers and heads); or (``"tcq"``) one
        :class:`~mmquant.models.tokentrellis.TrellisChannelCode` for all heads of a layer's
        queries and one for its keys, bits waterfilled jointly over both (:func:`tcq_qk_codes`).
    act_block, qk_block : int
        Tokens per rANS message of the ECSQ codes (1: each token its own message; 0: each
        forward batch one message); the 64 bits of each message's final state are counted.
    qk_margin : float
        Bits taken off ``qk_rate`` for the ECSQ query/key codes: their tables are checked on
        held-out calibration tokens, but the folded transforms were fitted on all of them.
    """
    r = check_float(rate, "rate", 0.0, lo_open=True)
    if weights:
        from mmquant.weightonly.metrics import METHODS

        check_choice(weight_method, "weight_method", METHODS)
    check_choice(act_allocation, "act_allocation", ("site", "joint", "sensitivity"))
    if act_code is None:
        act_code = "ecsq" if codes == "token" and act_allocation == "site" else "channel"
    check_choice(act_code, "act_code", ("channel", "ecsq", "tcq"))
    check_choice(qk_code, "qk_code", ("channel", "ecsq", "tcq"))
    if act_code != "channel" and (codes != "token" or act_allocation != "site"):
        raise ValueError(f"act_code={act_code!r} needs codes='token' and act_allocation='site'")
    ra = r if act_rate is None else check_float(act_rate, "act_rate", 0.0, lo_open=True)
    rq = r if qk_rate is None else check_float(qk_rate, "qk_rate", 0.0, lo_open=True)
    cap0 = calibration_capture(n_sentences, model.dtype.name, model.max_length)
    mt = fold_transforms(model, cap0)
    cap = capture(mt, cap0.sentences)
    split = int(cap.offsets[len(cap.lengths) // 2])
    nh, hd = _heads(model)
    act: dict[str, Any] = {}
    act_total = 0.0
    act_entries = 0
    if codes not in ("token", "static"):
        raise ValueError(f"codes must be 'token' or 'static', got {codes!r}")
    if codes == "token":
        from mmquant.models.actcodes import token_codes

        if act_allocation == "sensitivity":
            from mmquant.models.actcodes import sensitivity_gains

            site = token_codes(mt, cap.inputs, ra)
            gains = sensitivity_gains(mt, cap.inputs, site, cap.sentences[:SENSITIVITY_SENTENCES])
            act = dict(token_codes(mt, cap.inputs, ra, allocation="joint", gains=gains))
        elif act_code == "ecsq":
            act = dict(token_codes(mt, cap.inputs, ra, act_code="ecsq", block=act_block))
        else:
            act = dict(
                token_codes(mt, cap.inputs, ra, allocation=act_allocation, act_code=act_code)
            )
    for name in mt.linear_names:
        x = np.asarray(cap.inputs[name], np.float64)
        if codes == "token":
            if not name.endswith(("attention.self.key", "attention.self.value")):
                act_total += act[name].bits_per_entry * x.shape[1]
                act_entries += x.shape[1]
            continue
        if name.endswith(("attention.self.key", "attention.self.value")):
            act[name] = act[name.rsplit(".", 1)[0] + ".query"]  # one input, one code
            continue
        if name.endswith("attention.self.query"):
            p = name.rsplit(".", 1)[0]
            w = np.concatenate([mt.weight(p + "." + s) for s in ("query", "key", "value")])
        else:
            w = mt.weight(name)
        sw = weight_covariance(w)
        ln_out = name.endswith(("attention.self.query", "intermediate.dense"))
        if online and ln_out:
            t, ti, mu = balance(x.T @ x / len(x), sw)
            z = x @ t
            inner = _fit_act_code(z, np.diag(mu**0.5), ra, split, static=True)
            act[name] = OnlineTransformCode(t, ti, inner)
        else:
            # static per-channel ranges cannot follow the token-to-token range of GELU outputs
            static = not name.endswith("layer." + name.split(".")[2] + ".output.dense")
            act[name] = _fit_act_code(x, sw, ra, split, static=static)
        act_total += act[name].bits_per_entry * x.shape[1]
        act_entries += x.shape[1]
    qk: dict[tuple, Any] = {}
    qk_total = 0.0
    qk_entries = 0
    if qk_code == "ecsq":
        qk = _ecsq_qk(mt, cap, rq - check_float(qk_margin, "qk_margin", 0.0, rq), qk_block)
        qk_total = sum(c.fit_rate * c.mean.size for c in qk.values())
        qk_entries = sum(c.mean.size for c in qk.values())
    elif qk_code == "tcq":
        qk, qk_total, qk_entries = tcq_qk_codes(cap, mt.config.num_layers, nh, rq)
    for i in range(mt.config.num_layers if qk_code == "channel" else 0):
        curves, wts, keys, params = [], [], [], []
        for h in range(nh):
            qh, kh = (np.asarray(a, np.float64) for a in cap.head(i, h))
            sq, sk = qh.T @ qh / len(qh), kh.T @ kh / len(kh)
            for which, data, other in (("q", qh, sk), ("k", kh, sq)):
                mu, mse, clip = ChannelCode.curves(data)
                curves.append(mse)
                wts.append(np.clip(np.diag(other), 0.0, None))
                keys.append((i, which, h))
                params.append((mu, mse, clip))
        alloc = allocate_bits(curves, wts, int(len(keys) * hd * rq))
        for key, (mu, mse, clip), b in zip(keys, params, alloc):
            qk[key] = ChannelCode.from_curves(mu, mse, clip, b)
            qk_total += int(b.sum())
            qk_entries += b.size
    w_bits: dict[str, float] = {}
    w_hat: dict[str, np.ndarray] | None = None
    if weights:
        # Σ of the inputs the weights will actually meet: the coded activations
        covs: dict[str, np.ndarray] = {}
        done: dict[int, np.ndarray] = {}
        for name in mt.linear_names:
            if id(act[name]) not in done:  # query/key/value: one code, one input
                xq = np.asarray(act[name].quantize(np.asarray(cap.inputs[name], np.float64)))
                done[id(act[name])] = xq.T @ xq / len(xq)
            covs[name] = done[id(act[name])]
        w_hat, w_bits = watersic_weights(mt, covs, r, damp=damp, method=weight_method)
    qm = quantize_model(mt, weights=w_hat, activations=act, qk=qk)
    wl = WEIGHT_LABELS.get(weight_method, weight_method) if weights else "none"
    label = wl + (" / aware+online" if online else " / aware")
    if codes == "token":
        label = wl + " / token codes"
    if act_code != "channel":
        label += f" ({act_code.upper()} acts)"
    if qk_code != "channel":
        label += f", Q/K {qk_code.upper()}"
    return Recipe(
        name=label,
        model=qm.replace(weight_bits=w_bits, description=label),
        weight_bits=_mean_bits(w_bits, mt),
        act_bits=act_total / act_entries,
        qk_bits=qk_total / qk_entries,
        act_codes=act,
        qk_codes=qk,
        reference=mt,
    )
