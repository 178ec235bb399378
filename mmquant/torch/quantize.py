"""``quantize_``: quantize a torch model in place with any mmquant quantizer (like torchao's).

* **weights**: each selected ``nn.Linear`` weight ``W`` (``[out, in]``) is encoded along ``in`` by a
  registered quantizer and replaced by its decoding, in the module's dtype and on its device. The
  quantizer is one spec for all layers, a per-tensor plan (:class:`mmquant.covariances.Plan`, as a
  bit allocation writes it), or a weight-only method (``gptq``, ``watersic``, ``rtn`` …) that
  encodes with the layer's input covariance Σ_X (``encode(W, sigma=Σ_X)``) from a calibration file;
* **activations**: the inputs of the selected linear layers are fake-quantized by forward
  pre-hooks, along ``in``, token by token (real tokens only under
  :func:`~mmquant.torch.tensors.real_tokens`);
* **queries/keys**: each head's ``[tokens, head_dim]`` matrix, along the head dimension
  (:mod:`mmquant.torch.attention`).

With ``codes=True`` each quantized layer is replaced by a :class:`~mmquant.torch.codes.CodesLinear`
that keeps the weight's record and computes from the codes on the CPU
(:func:`mmquant.products.linear`) instead of holding the decoded weight.

The returned :class:`QuantReport` says, per weight tensor, the measured bits per entry, the
relative error (Σ_X-weighted when covariances are given) and the gap in bits to the
rate–distortion limit; its :meth:`~QuantReport.remove` takes the hooks off again.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmquant.core import Quantizer, get
from mmquant.covariances import CalibrationFile, Plan, load_covariances, load_plan
from mmquant.theory.highrate import waterfill_rate
from mmquant.torch.attention import disable_qk, enable_qk
from mmquant.torch.capture import ModuleFilter, linear_modules
from mmquant.torch.codes import _set_module, codes_linear
from mmquant.torch.tensors import apply_rows, to_numpy, to_torch

__all__ = ["LayerReport", "QuantReport", "quantize_", "takes_sigma"]


@dataclass(frozen=True)
class LayerReport:
    """What quantizing one weight tensor did.

    Attributes
    ----------
    spec : str
        The quantizer's spec string.
    bits : float
        Measured bits per entry (stored bytes of codes and side information).
    error : float
        Relative error ``tr(ΔΣΔᵀ)/tr(WΣWᵀ)`` with ``Δ = Ŵ − W`` and the layer's Σ_X when covariances
        were given (the error of the layer's outputs), else ``‖Δ‖²/‖W‖²``.
    gap_bits : float
        ``bits − R_limit(error)``: the measured rate minus the smallest rate any quantizer of iid
        Gaussian weights of the same power needs for this error (reverse waterfilling over the
        eigenvalues of Σ_X; Σ_X = I without covariances).
    weighted : bool
        Whether ``error`` is Σ_X-weighted.
    shape : tuple of int
    """

    spec: str
    bits: float
    error: float
    gap_bits: float
    weighted: bool
    shape: tuple[int, int]


@dataclass
class QuantReport:
    """The result of :func:`quantize_`: per weight tensor a :class:`LayerReport`, and the hooks."""

    layers: dict[str, LayerReport] = field(default_factory=dict)
    activations: str | None = None
    activation_modules: list[str] = field(default_factory=list)
    qk: str | None = None
    qk_modules: list[str] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list, repr=False)
    _model: Any = field(default=None, repr=False)

    @property
    def bits_per_weight(self) -> float:
        """Measured bits per weight over all quantized tensors (NaN if none)."""
        n = sum(r.shape[0] * r.shape[1] for r in self.layers.values())
        if n == 0:
            return float("nan")
        return sum(r.bits * r.shape[0] * r.shape[1] for r in self.layers.values()) / n

    def remove(self) -> None:
        """Take the activation and query/key hooks off the model (weights stay quantized)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._model is not None and self.qk is not None:
            disable_qk(self._model)

    def table(self) -> str:
        """A plain-text table, one row per weight tensor."""
        rows = [f"{'tensor':<52} {'spec':<28} {'bits':>6} {'rel.err':>9} {'gap(bit)':>8}"]
        for n, r in self.layers.items():
            rows.append(f"{n:<52} {r.spec:<28} {r.bits:6.3f} {r.error:9.2e} {r.gap_bits:8.3f}")
        return "\n".join(rows)


def takes_sigma(q: Quantizer) -> bool:
    """Whether the quantizer's encoder takes the input covariance (``encode(w, sigma=Σ_X)``)."""
    return "sigma" in inspect.signature(q._encode).parameters


def _as_calib(calib: Any) -> Mapping[str, np.ndarray] | None:
    if calib is None:
        return None
    if isinstance(calib, (str, Path)):
        return load_covariances(calib).covariances
    if isinstance(calib, CalibrationFile):
        return calib.covariances
    if isinstance(calib, Mapping):
        return {str(k): to_numpy(v) for k, v in calib.items()}
    raise TypeError(
        f"calib must be a CalibrationFile, a path or a mapping, got {type(calib).__name__}"
    )


def _weight_plan(
    weights: Any, lin: dict[str, nn.Linear], all_lin: dict[str, nn.Linear]
) -> dict[str, Quantizer]:
    """Weight-tensor name → quantizer."""
    if weights is None:
        return {}
    if isinstance(weights, Path) or (
        isinstance(weights, str) and weights.endswith(".json") and Path(weights).is_file()
    ):
        weights = load_plan(weights)
    if isinstance(weights, Plan):
        weights = weights.specs
    if isinstance(weights, Mapping):
        out = {}
        for name, spec in weights.items():
            mod = str(name).removesuffix(".weight")
            if mod not in all_lin:
                raise ValueError(f"the plan names {name!r}, which is not a linear layer's weight")
            out[mod + ".weight"] = get(spec)
        return out
    if isinstance(weights, (str, Quantizer)):
        q = get(weights)
        return {n + ".weight": q for n in lin}
    raise TypeError(
        f"weights must be a spec string, a Quantizer, a Plan, a plan file or a mapping, "
        f"got {type(weights).__name__}"
    )


def _eigenvalues(sigma: np.ndarray, cache: dict[str, np.ndarray]) -> np.ndarray:
    key = hashlib.sha1(np.ascontiguousarray(sigma).tobytes()).hexdigest()
    if key not in cache:
        cache[key] = np.clip(np.linalg.eigvalsh(sigma), 0.0, None)
    return cache[key]


def _quantize_weight(
    name: str,
    mod: nn.Linear,
    q: Quantizer,
    sigma: np.ndarray | None,
    eig_cache: dict,
    codes: bool = False,
) -> tuple[LayerReport, Any]:
    """Encode ``mod``'s weight; replace it by its decoding, or (``codes``) return the record."""
    w = np.array(to_numpy(mod.weight), copy=True)  # to_numpy may share the weight's memory
    if takes_sigma(q):
        if sigma is None and q.name != "rtn":
            raise ValueError(
                f"{q.spec!r} needs the input covariance of {name!r}: pass calib= "
                "(from mmquant.torch.capture_covariances or a calibration file)"
            )
        enc = q.encode(w, sigma=sigma) if sigma is not None else q.encode(w)
    else:
        enc = q.encode(w)
    w_hat = q.decode(enc)
    if not codes:
        with torch.no_grad():
            mod.weight.copy_(to_torch(w_hat, mod.weight))
    w64, d = w.astype(np.float64), np.asarray(w_hat, np.float64) - w.astype(np.float64)
    if sigma is not None:
        num = float(np.sum((d @ sigma) * d))
        den = float(np.sum((w64 @ sigma) * w64))
        eig = _eigenvalues(sigma, eig_cache)
    else:
        num, den = float(np.sum(d * d)), float(np.sum(w64 * w64))
        eig = np.ones(w.shape[1])
    err = num / den if den > 0 else float("inf") if num > 0 else 0.0
    s2 = float(np.mean(w64**2))
    wmse = num / w.size
    bits = float(enc.bits_per_entry)
    gap = bits - waterfill_rate(eig, wmse, sigma2=s2) if s2 > 0 and wmse > 0 else float("nan")
    rep = LayerReport(q.spec, bits, err, float(gap), sigma is not None, tuple(w.shape))
    return rep, (enc if codes else None)


def quantize_(
    model: nn.Module,
    weights: str | Quantizer | Plan | Mapping[str, Any] | Path | None = None,
    activations: str | Quantizer | None = None,
    qk: str | Quantizer | None = None,
    modules: ModuleFilter = None,
    *,
    calib: CalibrationFile | str | Path | Mapping[str, Any] | None = None,
    qk_modules: list[str] | None = None,
    codes: bool = False,
) -> QuantReport:
    """Quantize ``model`` in place: weights replaced, activations and queries/keys hooked.

    Parameters
    ----------
    model : torch.nn.Module
    weights : str, Quantizer, Plan, mapping or path, optional
        One quantizer for every selected linear weight (``"e8:q=14"``, ``"nvfp4"``,
        ``"watersic:rate=3"`` …); or a plan (``Plan``, a plan file, or a mapping weight-tensor name →
        spec), which names its own tensors. Weight-only methods (``gptq``, ``watersic``) encode with
        the layer's Σ_X from ``calib``.
    activations : str or Quantizer, optional
        Fake-quantizes the inputs of the selected linear layers, along ``in``, per token.
    qk : str or Quantizer, optional
        Fake-quantizes queries and keys per head along the head dimension (Hugging Face attention;
        see :mod:`mmquant.torch.attention`).
    modules : iterable of str or callable, optional
        Linear layers for ``weights`` (when one quantizer) and ``activations``; default all but the
        LM head (see :func:`~mmquant.torch.capture.linear_modules`).
    calib : CalibrationFile, path or mapping, optional
        Σ_X per weight-tensor name (:func:`~mmquant.torch.capture_covariances`); also makes the
        reported error the output error ``tr(ΔΣΔᵀ)/tr(WΣWᵀ)``.
    qk_modules : list of str, optional
        Attention modules whose queries/keys are quantized; default all.
    codes : bool
        Replace each quantized linear layer by a :class:`~mmquant.torch.codes.CodesLinear`
        holding its record: CPU inference from the codes (:func:`mmquant.products.linear`; the
        decoded weight only for families without a product path). The layers must be on the CPU.

    Returns
    -------
    QuantReport
        Per weight tensor: bits/entry, relative error, gap to the limit; ``remove()`` unhooks.

    Examples
    --------
    ::

        cal = capture_covariances(model, batches)
        rep = quantize_(model, "watersic:rate=3", activations="nvfp4", calib=cal)
        print(rep.table())
    """
    lin = linear_modules(model, modules)
    all_lin = linear_modules(model, lambda n, m: True)
    plan = _weight_plan(weights, lin, all_lin)
    covs = _as_calib(calib)
    act_q = get(activations) if activations is not None else None
    qk_q = get(qk) if qk is not None else None
    rep = QuantReport(_model=model)
    eig_cache: dict[str, np.ndarray] = {}
    for tensor, q in plan.items():
        name = tensor.removesuffix(".weight")
        sigma = None
        if covs is not None and tensor in covs:
            sigma = np.asarray(covs[tensor], np.float64)
            if sigma.shape != (all_lin[name].in_features,) * 2:
                raise ValueError(
                    f"the covariance of {tensor!r} is {sigma.shape}, the layer has "
                    f"{all_lin[name].in_features} inputs"
                )
        mod = all_lin[name]
        if codes and mod.weight.device.type != "cpu":
            raise ValueError(f"codes=True computes on the CPU; {name!r} is on {mod.weight.device}")
        rep.layers[tensor], enc = _quantize_weight(tensor, mod, q, sigma, eig_cache, codes)
        if enc is not None:
            new = codes_linear(mod, enc)
            _set_module(model, name, new)
            if name in lin:
                lin[name] = new
    if act_q is not None:

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (apply_rows(args[0], act_q.quantize), *args[1:])

        for _n, m in lin.items():
            rep._handles.append(m.register_forward_pre_hook(hook))
        rep.activations = act_q.spec
        rep.activation_modules = list(lin)
    if qk_q is not None:
        rep.qk_modules = enable_qk(model, qk_q, qk_modules)
        rep.qk = qk_q.spec
    return rep
