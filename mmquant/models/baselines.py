"""The registered codes of issue 18's table as :class:`~mmquant.models.recipes.Recipe` records.

Weights by a registered spec or WaterSIC (Σ_X from calibration), activations and queries/keys by
one registered spec; the measured rates of the activation and Q/K codes are taken on the
calibration inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmquant.models.capture import Capture, calibration_capture
from mmquant.models.minilm import MiniLM
from mmquant.models.quantized import quantize_model
from mmquant.models.recipes import Recipe, _mean_bits, watersic_weights

__all__ = ["RATE_TOKENS", "baseline_recipe"]


#: Tokens of each calibration matrix on which a registered code's rate is measured (the rate of
#: the block codes of the table depends on the data only through rare escapes and group scales;
#: a few hundred tokens give it to 1e-3 bit, and encoding every matrix costs as much as a forward
#: pass with E8 codes).
RATE_TOKENS = 512


def _spec_bits(spec: str, cap: Capture, kind: str, max_tokens: int = RATE_TOKENS) -> float:
    """Measured bits per entry of a registered code on the calibration activations or Q/K
    (the first ``max_tokens`` tokens of each matrix)."""
    from mmquant.core import get

    q = get(spec)
    total = 0.0
    count = 0
    if kind == "act":
        seen: set[int] = set()
        for x in cap.inputs.values():
            if id(x) in seen:
                continue
            seen.add(id(x))
            x = np.ascontiguousarray(x[:max_tokens])
            enc = q.encode(x)
            total += enc.bits_per_entry * x.size
            count += x.size
    else:
        for i in range(len(cap.queries)):
            for h in range(cap.queries[i].shape[1]):
                for a in cap.head(i, h):
                    a = np.ascontiguousarray(a[:max_tokens])
                    enc = q.encode(a)
                    total += enc.bits_per_entry * a.size
                    count += a.size
    return total / count


def baseline_recipe(
    model: MiniLM,
    weights: str | None,
    activations: str | None,
    *,
    weight_rate: float = 4.0,
    n_sentences: int = 64,
    damp: float = 1e-2,
    watersic: tuple[dict[str, np.ndarray], dict[str, float]] | None = None,
) -> Recipe:
    """A recipe of registered codes: weights by a spec or ``"watersic"``, activations and Q/K.

    Parameters
    ----------
    weights : str or None
        A registered spec applied to every weight, ``"watersic"`` (at ``weight_rate``, Σ_X from
        calibration) or None (unquantized).
    activations : str or None
        Spec of the code for the linear-layer inputs and the queries/keys (None: unquantized).
    watersic : (dict, dict), optional
        Precomputed :func:`~mmquant.models.recipes.watersic_weights` of ``model`` at
        ``weight_rate`` on this calibration (reused by several recipes; not recomputed).
    """
    cap = calibration_capture(n_sentences, model.dtype.name, model.max_length)
    w_arg: Any = None
    w_bits: dict[str, float] = {}
    if weights == "watersic" and watersic is not None:
        w_arg, w_bits = watersic
    elif weights == "watersic":
        w_arg, w_bits = watersic_weights(model, cap.covariances, weight_rate, damp=damp)
    elif weights is not None:
        w_arg = weights
    qm = quantize_model(model, weights=w_arg, activations=activations, qk=activations)
    if weights not in (None, "watersic"):
        w_bits = dict(qm.weight_bits)
    wlabel = "none" if weights is None else weights
    alabel = "none" if activations is None else activations
    label = f"{wlabel} / {alabel}"
    return Recipe(
        name=label,
        model=qm.replace(weight_bits=w_bits, description=label),
        weight_bits=_mean_bits(w_bits, model),
        act_bits=float("nan") if activations is None else _spec_bits(activations, cap, "act"),
        qk_bits=float("nan") if activations is None else _spec_bits(activations, cap, "qk"),
    )
