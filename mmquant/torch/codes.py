"""Quantized ``nn.Linear`` layers computed from their codes (CPU inference).

:class:`CodesLinear` holds the :class:`~mmquant.core.Encoded` record of a weight instead of a
float weight, and its forward is :func:`mmquant.products.linear` on the activations (as float32
numpy arrays on the CPU): no float matrix of the weight is materialised. Families without a
product from the codes (:func:`mmquant.products.has_kernel` false) keep the decoded weight and
run ``torch.nn.functional.linear`` instead. :func:`mmquant.torch.quantize_` builds these layers
with ``codes=True``.

The outputs equal those of the fake-quant path (the decoded weight in an ``nn.Linear``) within
float32 accumulation error: the product kernels accumulate each group's products in float32 and
the groups in float64 (:mod:`mmquant.products.reference`). The activations enter the kernels as
float32, so a float64 model computes its quantized linear layers in float32 on this path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmquant.core import Encoded, get
from mmquant.products import has_kernel, linear
from mmquant.torch.tensors import to_torch

__all__ = ["CodesLinear", "codes_linear"]


class CodesLinear(nn.Module):
    """``y = x·Ŵᵀ + b`` with ``Ŵ`` read from its codes (:mod:`mmquant.products`).

    Parameters
    ----------
    enc : Encoded
        Record of the ``[out, in]`` weight (any registered family).
    bias : torch.Tensor, optional
        The layer's bias (``[out]``), kept as a frozen parameter.
    backend : {"auto", "numpy", "numba"}
        Passed to :func:`mmquant.products.linear`.

    The outputs have the dtype of the input.

    Attributes
    ----------
    enc : Encoded
        The record the forward reads.
    from_codes : bool
        Whether the forward multiplies from the codes (else from the decoded weight).
    backend : str
        ``backend`` of :func:`mmquant.products.linear` (``"auto"``, ``"numpy"`` or ``"numba"``).

    Raises
    ------
    TypeError, ValueError
        ``enc`` is not a record of a 2-D matrix, or the bias does not have ``out`` entries.
    """

    def __init__(self, enc: Encoded, bias: torch.Tensor | None = None, backend: str = "auto"):
        super().__init__()
        if not isinstance(enc, Encoded):
            raise TypeError(f"expected an Encoded record, got {type(enc).__name__}")
        if len(enc.shape) != 2:
            raise ValueError(f"a linear layer needs a record of a 2-D weight, got {enc.shape}")
        self.enc = enc
        self.out_features, self.in_features = (int(d) for d in enc.shape)
        self.backend = backend
        self.from_codes = has_kernel(enc)
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(
                    f"bias has shape {tuple(bias.shape)}; expected ({self.out_features},)"
                )
            bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.bias = bias
        if self.from_codes:
            self.register_buffer("weight_decoded", None)
        else:
            w = np.asarray(get(enc.spec).decode(enc), np.float32)
            self.register_buffer("weight_decoded", torch.from_numpy(np.ascontiguousarray(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x·Ŵᵀ + b`` for ``x`` of shape ``[..., in]`` on the CPU."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(
                f"CodesLinear runs on the CPU; the input is on {x.device} (use the fake-quant "
                "layers of quantize_(..., codes=False) on an accelerator)"
            )
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has shape {tuple(x.shape)}: its last axis must be {self.in_features}"
            )
        if self.from_codes:
            xa = x.detach().to(torch.float32).numpy()
            y = to_torch(linear(xa, self.enc, backend=self.backend), x)
        else:
            w = self.weight_decoded.to(x.dtype)
            y = nn.functional.linear(x, w)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"spec={self.enc.spec!r}, from_codes={self.from_codes}, "
            f"bias={self.bias is not None}"
        )


def codes_linear(mod: nn.Linear, enc: Encoded, backend: str = "auto") -> CodesLinear:
    """A :class:`CodesLinear` replacing ``mod`` (its bias kept) with the weight record ``enc``.

    Raises
    ------
    ValueError
        The record's shape is not the layer's ``[out, in]``, or the layer is not on the CPU.
    """
    if tuple(enc.shape) != (mod.out_features, mod.in_features):
        raise ValueError(
            f"the record has shape {tuple(enc.shape)}; the layer's weight is "
            f"[{mod.out_features}, {mod.in_features}]"
        )
    if mod.weight.device.type != "cpu":
        raise ValueError(
            f"layers from the codes run on the CPU; this one is on {mod.weight.device}"
        )
    return CodesLinear(enc, mod.bias, backend=backend)


def _set_module(model: nn.Module, name: str, new: Any) -> None:
    """Replace the submodule ``name`` of ``model`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
