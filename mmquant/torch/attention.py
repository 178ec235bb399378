"""Fake quantization of the queries and keys of Hugging Face attention, per head.

Modern ``transformers`` models (BERT, Llama, Mistral, Qwen …) call their attention through
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` with the queries and keys already
projected, split into heads (``[batch, heads, tokens, head_dim]``) and, for rotary models, rotated:
exactly the two operands of ``Q Kᵀ``. This module registers two attention implementations,
``mmquant-qk`` (SDPA) and ``mmquant-qk-eager``, that quantize each head's ``[tokens, head_dim]``
matrix of queries and keys along the head dimension (real tokens only under
:func:`~mmquant.torch.tensors.real_tokens`) and then call the attention the model used before.
Models that the bridge did not mark pass through unchanged.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmquant.core import Quantizer
from mmquant.torch.tensors import active_mask, to_numpy, to_torch

__all__ = ["attention_modules", "enable_qk", "disable_qk"]

_SDPA = "mmquant-qk"
_EAGER = "mmquant-qk-eager"
_PAIRS = (("query", "key"), ("q_proj", "k_proj"))
#: attention module → quantizer of its queries and keys
_MARKED: weakref.WeakKeyDictionary[nn.Module, Quantizer] = weakref.WeakKeyDictionary()
#: model → [(config, attention implementation before enable_qk)]
_BEFORE: weakref.WeakKeyDictionary[nn.Module, list[tuple[Any, str]]] = weakref.WeakKeyDictionary()
_registered = False


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Attention modules of ``model`` that own a query and a key projection, by name."""
    out = {}
    for name, m in model.named_modules():
        kids = dict(m.named_children())
        if any(q in kids and k in kids for q, k in _PAIRS):
            out[name] = m
    return out


def _quantize_heads(t: torch.Tensor, q: Quantizer) -> torch.Tensor:
    """Quantize ``t`` ``[batch, heads, tokens, d]`` per head along ``d`` (real tokens only)."""
    mask = active_mask()
    if mask is not None and (mask.shape[0] != t.shape[0] or mask.shape[1] != t.shape[2]):
        mask = None  # a cache or another sequence length: every token
    out = t.clone()
    for h in range(t.shape[1]):
        head = t[:, h]  # [batch, tokens, d]
        rows = head[mask.to(t.device)] if mask is not None else head.reshape(-1, t.shape[-1])
        qh = to_torch(q.quantize(to_numpy(rows)), t)
        if mask is not None:
            out[:, h][mask.to(t.device)] = qh
        else:
            out[:, h] = qh.reshape(head.shape)
    return out


def _eager_of(module: nn.Module) -> Callable[..., Any]:
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise ValueError(
            f"{type(module).__name__} has no eager attention function to wrap; "
            "load the model with attn_implementation='sdpa'"
        )
    return fn


def _wrapped(eager: bool) -> Callable[..., Any]:
    def attention(
        module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *a, **kw
    ) -> Any:
        q = _MARKED.get(module)
        if q is not None:
            query, key = _quantize_heads(query, q), _quantize_heads(key, q)
        if eager:
            return _eager_of(module)(module, query, key, value, *a, **kw)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, *a, **kw)

    return attention


def _register() -> None:
    global _registered
    if _registered:
        return
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    except ImportError as e:  # pragma: no cover - depends on the installed transformers
        raise ImportError(
            "quantizing queries/keys needs transformers >= 4.53 (AttentionInterface and "
            f"AttentionMaskInterface): {e}"
        ) from None
    AttentionInterface.register(_SDPA, _wrapped(eager=False))
    AttentionInterface.register(_EAGER, _wrapped(eager=True))
    AttentionMaskInterface.register(_SDPA, sdpa_mask)
    AttentionMaskInterface.register(_EAGER, eager_mask)
    _registered = True


def _configs(model: nn.Module) -> list[Any]:
    seen, out = set(), []
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation") and id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return out


def enable_qk(model: nn.Module, quantizer: Quantizer, names: list[str] | None = None) -> list[str]:
    """Quantize the queries and keys of the attention modules of ``model`` (in place).

    Parameters
    ----------
    model : torch.nn.Module
        A ``transformers`` model whose attention goes through ``ALL_ATTENTION_FUNCTIONS``.
    quantizer : Quantizer
    names : list of str, optional
        Attention module names (see :func:`attention_modules`); default all.

    Returns
    -------
    list of str
        The attention modules marked.

    Raises
    ------
    ValueError
        No attention module, an unknown name, or a model without ``config._attn_implementation``.
    """
    found = attention_modules(model)
    if not found:
        raise ValueError(
            "no attention module with query/key (BERT) or q_proj/k_proj (Llama-style) projections"
        )
    if names is not None:
        bad = [n for n in names if n not in found]
        if bad:
            raise ValueError(f"not attention modules: {bad[:5]} (e.g. {next(iter(found))!r})")
        found = {n: found[n] for n in names}
    configs = _configs(model)
    if not configs:
        raise ValueError("qk quantization needs a transformers model (config._attn_implementation)")
    _register()
    before = _BEFORE.setdefault(model, [])
    for c in configs:
        impl = c._attn_implementation
        if impl in (_SDPA, _EAGER):
            continue
        c._attn_implementation = _EAGER if impl == "eager" else _SDPA
        before.append((c, impl))
    for m in found.values():
        _MARKED[m] = quantizer
    return list(found)


def disable_qk(model: nn.Module) -> None:
    """Undo :func:`enable_qk`: unmark the modules, restore the attention implementation."""
    for m in model.modules():
        _MARKED.pop(m, None)
    for c, impl in _BEFORE.pop(model, []):
        c._attn_implementation = impl
