"""Quantized forward passes of MiniLM and the two measures of their damage.

Any registered quantizer (spec string or :class:`~mmquant.core.Quantizer`) can replace

* the weights ``W`` (``[out, in]``) of chosen linear layers, quantized along ``in`` (the inner
  dimension of ``W x``), or explicit replacement matrices (GPTQ / WaterSIC results);
* the inputs ``X`` (``[tokens, in]``) of chosen linear layers, quantized along ``in``;
* the queries and keys, each head's ``[tokens, 32]`` matrix quantized along the head dimension.

Activations are quantized per forward batch over the real tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.core import Quantizer, get
from mmquant.models.capture import Capture, calibration_capture, capture
from mmquant.models.minilm import MiniLM
from mmquant.validation import as_matrix

__all__ = [
    "quantize_model",
    "embedding_cosine",
    "attention_logit_error",
    "QuantEval",
    "evaluate",
]


def _layer_set(model: MiniLM, layers: Iterable[str] | None) -> frozenset[str]:
    names = model.linear_names
    if layers is None:
        return frozenset(names)
    if isinstance(layers, str):
        layers = [layers]
    out = set()
    for n in layers:
        n = n.removesuffix(".weight")
        if n not in names:
            raise ValueError(f"unknown linear layer {n!r}; names look like {names[0]!r}")
        out.add(n)
    return frozenset(out)


def quantize_model(
    model: MiniLM,
    weights: str | Quantizer | Mapping[str, Any] | None = None,
    *,
    activations: str | Quantizer | Mapping[Any, Any] | None = None,
    qk: str | Quantizer | Mapping[Any, Any] | None = None,
    layers: Iterable[str] | None = None,
    qk_layers: Iterable[int] | None = None,
) -> MiniLM:
    """A copy of ``model`` with quantized weights, activations and/or queries/keys.

    Parameters
    ----------
    model : MiniLM
        The model to start from (weights are shared, never modified).
    weights : str, Quantizer or mapping, optional
        A quantizer applied to the weight of every linear layer in ``layers`` (``q.quantize(W)``,
        along ``in``), or a mapping ``name -> W_hat`` of replacement ``[out, in]`` matrices (any
        array, or a Quantizer for that layer only).
    activations : str, Quantizer or mapping, optional
        Quantizer for the inputs of the linear layers in ``layers`` (along ``in``), or a mapping
        ``layer name -> code`` (any object with ``quantize(x)``; layers not in it stay exact).
    qk : str, Quantizer or mapping, optional
        Quantizer for the queries and keys of the layers in ``qk_layers`` (per head, along the
        head dimension), or a mapping ``(layer, "q" | "k", head) -> code`` (or ``(layer, "q" |
        "k") -> code`` on ``[tokens, heads·head_dim]``, all heads at once).
    layers : iterable of str, optional
        Linear-layer names for ``weights`` (when a quantizer) and ``activations``; default all 36.
    qk_layers : iterable of int, optional
        Transformer layers whose queries/keys are quantized; default all.

    Returns
    -------
    MiniLM
        ``description`` says what was replaced; ``weight_bits`` holds the measured bits per entry
        of each weight quantized here.
    """
    if not isinstance(model, MiniLM):
        raise TypeError(f"model must be a MiniLM, got {type(model).__name__}")
    sel = _layer_set(model, layers)
    new_w = dict(model.weights)
    bits: dict[str, float] = {}
    desc = []
    if weights is not None:
        if isinstance(weights, Mapping):
            items = [(n.removesuffix(".weight"), v) for n, v in weights.items()]
            _layer_set(model, [n for n, _ in items])
            desc.append(f"weights={len(items)} replaced")
        else:
            q = get(weights)
            items = [(n, q) for n in model.linear_names if n in sel]
            desc.append(f"weights={q.spec}")
        for name, v in items:
            w = model.weights[name + ".weight"]
            if isinstance(v, (str, Quantizer)):
                qq = get(v)
                enc = qq.encode(w)
                bits[name] = enc.bits_per_entry
                w_hat = qq.decode(enc)
            else:
                w_hat = as_matrix(v, name=f"weights[{name!r}]")
                if w_hat.shape != w.shape:
                    raise ValueError(
                        f"replacement for {name!r} has shape {w_hat.shape}, expected {w.shape}"
                    )
            a = np.ascontiguousarray(w_hat, dtype=model.dtype)
            a.flags.writeable = False
            new_w[name + ".weight"] = a
    act_q = _act_code(activations, "activations")
    if act_q is not None:
        desc.append(f"activations={_code_name(act_q)}")
    qk_q = _act_code(qk, "qk")
    n_layers = model.config.num_layers
    qk_sel = (
        frozenset(range(n_layers)) if qk_layers is None else frozenset(int(i) for i in qk_layers)
    )
    if any(not 0 <= i < n_layers for i in qk_sel):
        raise ValueError(f"qk_layers must be in [0, {n_layers - 1}], got {sorted(qk_sel)}")
    if qk_q is not None:
        desc.append(f"qk={_code_name(qk_q)}")
    out = model.replace(
        weights=new_w,
        act_quantizer=act_q,
        act_layers=sel if act_q is not None else frozenset(),
        qk_quantizer=qk_q,
        qk_layers=qk_sel if qk_q is not None else frozenset(),
        description=", ".join(desc) or "fp",
        weight_bits=bits,
    )
    return out


def _act_code(v: Any, what: str) -> Any:
    """A registered quantizer from a spec, or a mapping of per-layer codes passed through."""
    if v is None:
        return None
    if isinstance(v, Mapping):
        bad = [k for k, q in v.items() if not callable(getattr(q, "quantize", None))]
        if bad:
            raise TypeError(f"{what}[{bad[0]!r}] has no quantize(x) method")
        return v
    return get(v)


def _code_name(q: Any) -> str:
    return f"{len(q)} per-layer codes" if isinstance(q, Mapping) else q.spec


def embedding_cosine(reference: Any, approx: Any) -> np.ndarray:
    """Cosine similarity of each row of ``approx`` with the same row of ``reference``.

    Parameters
    ----------
    reference, approx : array_like, shape (N, d)
        Sentence embeddings (need not be normalised).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64 cosines ``⟨e, ê⟩ / (‖e‖‖ê‖)``; 1 means identical directions.
    """
    a = as_matrix(reference, name="reference").astype(np.float64)
    b = as_matrix(approx, name="approx").astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"reference is {a.shape} and approx is {b.shape}: shapes must match")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("an embedding is all zeros: cosine undefined")
    return np.sum(a * b, axis=1) / (na * nb)


def attention_logit_error(reference: Capture, approx: Capture, *, per_head: bool = False) -> Any:
    """Relative squared error of the attention logits ``Q_h K_hᵀ/√d`` (sentence blocks only).

    ``err = Σ_s ‖L̂_s − L_s‖²_F / Σ_s ‖L_s‖²_F`` summed over sentences ``s`` (and over layers and
    heads unless ``per_head``); ``10·log10(1/err)`` is the logit SQNR in dB.

    Parameters
    ----------
    reference, approx : Capture
        Captures of the reference and of the quantized model on the same sentences.
    per_head : bool
        Return a ``[layers, heads]`` array instead of one number.
    """
    if not isinstance(reference, Capture) or not isinstance(approx, Capture):
        raise TypeError("attention_logit_error expects two Capture records")
    if not np.array_equal(reference.lengths, approx.lengths):
        raise ValueError("the two captures are not of the same sentences (token counts differ)")
    n_layers = len(reference.queries)
    n_heads = reference.queries[0].shape[1]
    err = np.zeros((n_layers, n_heads))
    power = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        for s in range(len(reference.lengths)):
            ref = reference.attention_logits(layer, s)
            app = approx.attention_logits(layer, s)
            err[layer] += np.sum((app - ref) ** 2, axis=(1, 2))
            power[layer] += np.sum(ref**2, axis=(1, 2))
    if per_head:
        return err / power
    return float(err.sum() / power.sum())


@dataclass(frozen=True)
class QuantEval:
    """How far a quantized model is from the reference on the same sentences.

    Attributes
    ----------
    cosine_mean, cosine_min : float
        Mean and worst embedding cosine similarity to the unquantized model.
    logit_error : float
        :func:`attention_logit_error` (relative squared error, all layers and heads).
    sentences : int
        Number of evaluation sentences.
    description : str
        What was quantized.
    """

    cosine_mean: float
    cosine_min: float
    logit_error: float
    sentences: int
    description: str


def evaluate(
    model: MiniLM,
    sentences: Sequence[str] | None = None,
    *,
    n_sentences: int = 64,
    split: str = "evaluation",
) -> QuantEval:
    """Compare a (quantized) model with the unquantized one of the same dtype.

    Parameters
    ----------
    model : MiniLM
        Typically the output of :func:`quantize_model`.
    sentences : sequence of str, optional
        Evaluation sentences; default: ``n_sentences`` from the ``split`` half of the pool (the
        reference capture is then the cached :func:`calibration_capture`).
    """
    if sentences is None:
        ref = calibration_capture(n_sentences, model.dtype.name, model.max_length, split)
        sentences = ref.sentences
    else:
        ref = capture(
            MiniLM.load(model.dtype, path=model.path, max_length=model.max_length), sentences
        )
    got = capture(model, sentences)
    cos = embedding_cosine(ref.embeddings, got.embeddings)
    return QuantEval(
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        logit_error=attention_logit_error(ref, got),
        sentences=len(sentences),
        description=model.description,
    )
