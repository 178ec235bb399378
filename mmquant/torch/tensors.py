"""Torch ↔ numpy at the bridge's boundary, and the real-token mask the hooks honour.

Conventions:

* a tensor goes to numpy on the CPU, detached, float16/bfloat16 widened to float32 (the dtypes the
  quantizers take); float32/float64 keep their precision;
* results go back in the dtype and on the device of the tensor they replace;
* the hooks of :func:`mmquant.torch.quantize_` quantize the activations of **real tokens** only when
  a mask is active (:func:`real_tokens`), exactly as the numpy MiniLM quantizes its packed real
  tokens: padded positions are left as they are and never enter a scale.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["to_numpy", "to_torch", "real_tokens", "active_mask", "apply_rows", "mask_of"]

_MASK: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "mmquant_real_tokens", default=None
)


def to_numpy(t: Any) -> np.ndarray:
    """A tensor (any float dtype, any device) as a float32/float64 numpy array on the CPU."""
    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.cpu().numpy()


def to_torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``a`` as a tensor with the dtype and device of ``like``."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=like.device, dtype=like.dtype)


def mask_of(batch: Any) -> torch.Tensor | None:
    """The ``attention_mask`` of a batch (a mapping of model inputs), as bool, or ``None``."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        m = batch.get("attention_mask") if hasattr(batch, "get") else None
        if m is not None:
            m = torch.as_tensor(m)
            if m.ndim != 2:
                raise ValueError(f"attention_mask must be [batch, tokens], got {tuple(m.shape)}")
            return m.to(torch.bool)
    return None


@contextlib.contextmanager
def real_tokens(mask: Any) -> Iterator[None]:
    """Within the block, hooks see only the tokens where ``mask`` (``[batch, tokens]``) is true.

    Used by :func:`~mmquant.torch.capture_covariances` and the evaluation functions around each
    forward pass; use it around your own forward passes on padded batches. ``None`` means all
    tokens are real.
    """
    m = None if mask is None else torch.as_tensor(mask).to(torch.bool)
    if m is not None and m.ndim != 2:
        raise ValueError(f"the token mask must be [batch, tokens], got {tuple(m.shape)}")
    tok = _MASK.set(m)
    try:
        yield
    finally:
        _MASK.reset(tok)


def active_mask() -> torch.Tensor | None:
    """The mask set by the innermost :func:`real_tokens` block, or ``None``."""
    return _MASK.get()


def _mask_for(x: torch.Tensor) -> torch.Tensor | None:
    m = _MASK.get()
    if m is None or x.ndim < 3 or tuple(x.shape[:2]) != tuple(m.shape):
        return None
    return m.to(x.device)


def apply_rows(x: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply ``fn`` to the rows (last axis) of the real tokens of ``x`` ``[batch, tokens, …, d]``.

    ``fn`` takes and returns a numpy ``[rows, d]`` matrix; the rows are the real tokens in
    order (batch-major) when a mask is active, else every row. Returns a new tensor.
    """
    m = _mask_for(x)
    d = x.shape[-1]
    if m is None:
        flat = x.reshape(-1, d)
        return to_torch(fn(to_numpy(flat)), x).reshape(x.shape)
    out = x.clone()
    sel = x[m]  # [rows, …, d]
    out[m] = to_torch(fn(to_numpy(sel.reshape(-1, d))), x).reshape(sel.shape)
    return out


def masked_rows(x: torch.Tensor) -> torch.Tensor:
    """The real-token rows of ``x`` as a ``[rows, d]`` tensor (all rows without a mask)."""
    m = _mask_for(x)
    d = x.shape[-1]
    return (x if m is None else x[m]).reshape(-1, d)
