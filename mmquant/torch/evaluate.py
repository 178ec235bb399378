"""How much a quantized torch model changed: perplexity, next-token KL, embedding cosine.

* causal LMs: :func:`perplexity` of the model on token batches, and :func:`kl_divergence`, the
  mean over tokens of ``KL(p_ref ‖ p_model)`` of the next-token distributions (nats), the measure
  llama.cpp reports for its quantizations; :func:`compare_lm` gives both with the top-1 agreement;
* encoders: :func:`embeddings` (mean-pooled over the real tokens, L2-normalised, as
  sentence-transformers does) and :func:`embedding_cosine` of a quantized model to the original.

Batches are mappings of model inputs (``input_ids``, ``attention_mask`` …) or tensors of ids; padded
positions (``attention_mask == 0``) count nowhere. All sums are in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mmquant.torch.capture import run_batch
from mmquant.torch.tensors import mask_of

__all__ = [
    "LMComparison",
    "chunk_ids",
    "perplexity",
    "kl_divergence",
    "compare_lm",
    "embeddings",
    "embedding_cosine",
]


def _ids_mask(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch if isinstance(batch, torch.Tensor) else batch["input_ids"]
    ids = torch.as_tensor(ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got {tuple(ids.shape)}")
    m = None if isinstance(batch, torch.Tensor) else mask_of(batch)
    return ids, torch.ones_like(ids, dtype=torch.bool) if m is None else m.to(ids.device)


def _logits(model: nn.Module, batch: Any) -> torch.Tensor:
    out = run_batch(model, batch)
    lg = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
    if not isinstance(lg, torch.Tensor) or lg.ndim != 3:
        raise ValueError("the model must return next-token logits [batch, tokens, vocab]")
    return lg


def _batches(batches: Iterable[Any]) -> list[Any]:
    out = list(batches)
    if not out:
        raise ValueError("no batch given")
    return out


def chunk_ids(ids: Any, seq_len: int, batch_size: int = 8) -> list[torch.Tensor]:
    """Cut a 1-D sequence of token ids into ``[batch, seq_len]`` blocks (the tail is dropped).

    The usual perplexity protocol: the text's tokens end to end, in windows of ``seq_len``.
    """
    t = torch.as_tensor(ids).reshape(-1)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    n = t.numel() // seq_len
    if n == 0:
        raise ValueError(f"{t.numel()} tokens are fewer than seq_len={seq_len}")
    rows = t[: n * seq_len].reshape(n, seq_len)
    return [rows[i : i + batch_size] for i in range(0, n, batch_size)]


def _next_token_nll(model: nn.Module, batches: list[Any]) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            ids, m = _ids_mask(b)
            lp = torch.log_softmax(_logits(model, b)[:, :-1].to(torch.float64), dim=-1)
            tgt = ids[:, 1:].to(lp.device)
            keep = (m[:, 1:] & m[:, :-1]).to(lp.device)
            nll = -lp.gather(-1, tgt[..., None])[..., 0]
            total += float(nll[keep].sum())
            count += int(keep.sum())
    if count == 0:
        raise ValueError("no token to predict (sequences of length < 2?)")
    return total, count


def perplexity(model: nn.Module, batches: Iterable[Any]) -> float:
    """``exp`` of the mean next-token negative log-likelihood over the real tokens."""
    total, count = _next_token_nll(model, _batches(batches))
    return math.exp(total / count)


def kl_divergence(reference: nn.Module, model: nn.Module, batches: Iterable[Any]) -> float:
    """Mean over real tokens of ``KL(p_reference ‖ p_model)`` of the next token, in nats."""
    return compare_lm(reference, model, batches).kl


@dataclass(frozen=True)
class LMComparison:
    """A causal LM against its unquantized reference on the same tokens.

    Attributes
    ----------
    perplexity_ref, perplexity : float
    kl : float
        Mean next-token ``KL(p_ref ‖ p)`` in nats.
    kl_max : float
        Largest per-token KL.
    top1 : float
        Fraction of positions where both models' most likely next token agree.
    tokens : int
    """

    perplexity_ref: float
    perplexity: float
    kl: float
    kl_max: float
    top1: float
    tokens: int


def compare_lm(reference: nn.Module, model: nn.Module, batches: Iterable[Any]) -> LMComparison:
    """Perplexities, next-token KL and top-1 agreement of ``model`` against ``reference``."""
    bs = _batches(batches)
    nll = [0.0, 0.0]
    kl_sum, kl_max, agree, count = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for b in bs:
            ids, m = _ids_mask(b)
            lps = []
            for i, mod in enumerate((reference, model)):
                lp = torch.log_softmax(_logits(mod, b)[:, :-1].to(torch.float64), dim=-1)
                keep = (m[:, 1:] & m[:, :-1]).to(lp.device)
                tgt = ids[:, 1:].to(lp.device)
                nll[i] += float(-lp.gather(-1, tgt[..., None])[..., 0][keep].sum())
                lps.append(lp[keep].cpu())
            p_ref = lps[0].exp()
            kl = (p_ref * (lps[0] - lps[1])).sum(-1).clamp_min(0.0)
            kl_sum += float(kl.sum())
            kl_max = max(kl_max, float(kl.max())) if kl.numel() else kl_max
            agree += int((lps[0].argmax(-1) == lps[1].argmax(-1)).sum())
            count += int(kl.numel())
    if count == 0:
        raise ValueError("no token to predict (sequences of length < 2?)")
    return LMComparison(
        perplexity_ref=math.exp(nll[0] / count),
        perplexity=math.exp(nll[1] / count),
        kl=kl_sum / count,
        kl_max=kl_max,
        top1=agree / count,
        tokens=count,
    )


def embeddings(model: nn.Module, batches: Iterable[Any]) -> torch.Tensor:
    """Sentence embeddings ``[N, hidden]``: last hidden state mean-pooled over real tokens, unit norm."""
    out = []
    with torch.no_grad():
        for b in _batches(batches):
            _, m = _ids_mask(b)
            res = run_batch(model, b)
            h = res.last_hidden_state if hasattr(res, "last_hidden_state") else res[0]
            w = m.to(h.device, h.dtype)[..., None]
            pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1, eps=1e-12))
    return torch.cat(out)


def embedding_cosine(
    reference: nn.Module | torch.Tensor, model: nn.Module, batches: Sequence[Any]
) -> np.ndarray:
    """Cosine of each sentence's embedding under ``model`` with the reference's (float64, ``(N,)``).

    ``reference`` is the unquantized model or its :func:`embeddings` on the same batches.
    """
    bs = _batches(batches)
    e_ref = reference if isinstance(reference, torch.Tensor) else embeddings(reference, bs)
    e = embeddings(model, bs)
    if e_ref.shape != e.shape:
        raise ValueError(f"reference embeddings {tuple(e_ref.shape)} vs {tuple(e.shape)}")
    a, b = e_ref.detach().cpu().double(), e.detach().cpu().double()
    return (torch.nn.functional.cosine_similarity(a, b, dim=-1)).numpy()
