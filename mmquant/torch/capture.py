"""Input covariances Σ_X = E[x xᵀ] of a torch model's linear layers, captured by forward hooks.

The result is what GPTQ and WaterSIC need (``mmquant.get("watersic:…").encode(W, sigma=Σ_X)``) and
what ``mmquant weights`` / ``mmquant audit --calib`` read: a calibration file written by
:func:`mmquant.covariances.save_covariances`, one float64 ``n_in × n_in`` matrix per layer under the
name of the layer's **weight tensor** (``"model.layers.0.self_attn.q_proj.weight"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmquant.covariances import CalibrationFile, save_covariances
from mmquant.torch.tensors import mask_of, masked_rows, real_tokens, to_numpy

__all__ = ["capture_covariances", "linear_modules", "run_batch"]

ModuleFilter = Iterable[str] | Callable[[str, nn.Module], bool] | None


def linear_modules(model: nn.Module, modules: ModuleFilter = None) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` selected by ``modules``, by name, in model order.

    Parameters
    ----------
    model : torch.nn.Module
    modules : iterable of str or callable, optional
        Module names (a trailing ``.weight`` is allowed), or a filter ``f(name, module) -> bool``
        like torchao's ``filter_fn``. Default: every linear layer except the model's output
        embedding (the LM head), which weight-quantization methods conventionally leave alone.

    Raises
    ------
    ValueError
        A name that is not a linear layer of the model, or a selection that is empty.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    lin = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if modules is None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        out = {n: m for n, m in lin.items() if m is not head}
    elif callable(modules):
        out = {n: m for n, m in lin.items() if modules(n, m)}
    else:
        if isinstance(modules, str):
            modules = [modules]
        names = [str(n).removesuffix(".weight") for n in modules]
        bad = [n for n in names if n not in lin]
        if bad:
            some = ", ".join(list(lin)[:3])
            raise ValueError(f"not a linear layer of the model: {bad[:5]} (linear layers: {some}…)")
        want = set(names)
        out = {n: m for n, m in lin.items() if n in want}
    if not out:
        raise ValueError("no linear layer selected")
    return out


def run_batch(model: nn.Module, batch: Any) -> Any:
    """One forward pass on ``batch`` (a mapping of model inputs, or a tensor of input ids).

    Padded tokens (``attention_mask == 0``) are hidden from the hooks (:func:`real_tokens`).
    """
    if isinstance(batch, torch.Tensor):
        with real_tokens(None):
            return model(batch)
    if not hasattr(batch, "keys"):
        raise TypeError(
            f"a batch must be a mapping of model inputs or a tensor of ids, got {type(batch).__name__}"
        )
    with real_tokens(mask_of(batch)):
        return model(**batch)


def capture_covariances(
    model: nn.Module,
    batches: Iterable[Any],
    modules: ModuleFilter = None,
    *,
    path: str | Path | None = None,
) -> CalibrationFile:
    """Σ_X = E[x xᵀ] (float64) of the inputs of the model's linear layers over ``batches``.

    Streams: one float64 ``n_in × n_in`` accumulator per layer (on the layer's device), one
    forward pass per batch under ``torch.no_grad()``; padded tokens (``attention_mask == 0``) are
    skipped. The model is left as it was (hooks removed, even on error).

    Parameters
    ----------
    model : torch.nn.Module
        Any model built of ``nn.Linear`` layers (a Hugging Face model, your own module ...).
    batches : iterable
        Each a mapping of model inputs (``{"input_ids": …, "attention_mask": …}``, as a tokenizer
        returns) or a tensor of input ids.
    modules : iterable of str or callable, optional
        Which linear layers (see :func:`linear_modules`); default every one but the LM head.
    path : str or Path, optional
        Also write the calibration file there (:func:`mmquant.covariances.save_covariances`).

    Returns
    -------
    mmquant.covariances.CalibrationFile
        ``covariances[name + ".weight"]`` and ``tokens[name + ".weight"]`` (tokens averaged).

    Raises
    ------
    ValueError
        No batch, no real token reached a layer, or non-finite activations.
    """
    sel = linear_modules(model, modules)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(sel, 0)

    def make_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = masked_rows(args[0]).to(torch.float64)
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"the input of {name!r} holds NaN or Inf")
            s = x.T @ x
            sums[name] = sums[name] + s if name in sums else s
            counts[name] += int(x.shape[0])

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in sel.items()]
    n_batches = 0
    try:
        with torch.no_grad():
            for batch in batches:
                run_batch(model, batch)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
    if n_batches == 0:
        raise ValueError("no calibration batch given")
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise ValueError(f"no token reached the layers {empty[:5]} (are they used in forward?)")
    covs, tokens = {}, {}
    for n, s in sums.items():
        c = to_numpy(s) / counts[n]
        covs[n + ".weight"] = 0.5 * (c + c.T)
        tokens[n + ".weight"] = counts[n]
    if path is not None:
        save_covariances(path, covs, tokens)
    return CalibrationFile(covs, tokens)
