"""Gap of a quantized layer to the waterfilling limit, and one entry point for every method."""

from __future__ import annotations

import numpy as np

from mmquant.theory.highrate import waterfill_rate
from mmquant.validation import check_choice
from mmquant.weightonly.result import WeightQuant

__all__ = ["waterfill_gap_bits", "quantize_layer", "METHODS", "METHOD_SPECS"]

#: Method names of :func:`quantize_layer` (and of ``mmquant weights --method``).
METHODS = ("rtn", "gptq", "gptq-rot", "watersic", "e8sic", "tcqsic")
#: Registered quantizer (spec) of each method of :data:`METHODS`.
METHOD_SPECS = {
    "rtn": "rtn",
    "gptq": "gptq",
    "gptq-rot": "gptq:rotate=true",
    "watersic": "watersic",
    "e8sic": "e8sic",
    "tcqsic": "tcqsic",
}


def waterfill_gap_bits(
    q: WeightQuant,
    sigma: np.ndarray,
    *,
    sigma2: float | None = None,
    eigenvalues: np.ndarray | None = None,
) -> float:
    """Measured rate minus the waterfilling rate at the measured WMSE, in bits per weight.

    ``gap = bits_per_weight − R_limit(WMSE)``, ``R_limit`` the reverse-waterfilling rate of iid
    ``N(0, σ²)`` weights over the eigenvalues of Σ_X (:func:`mmquant.theory.highrate.waterfill_rate`).

    Parameters
    ----------
    q : WeightQuant
    sigma : numpy.ndarray
        ``(n, n)`` Σ_X (undamped).
    sigma2 : float, optional
        Weight variance σ²; default ``mean(Ŵ²)``, a slightly biased estimate: pass ``mean(W²)``
        when the original weights are at hand (the CLI and experiments do).
    eigenvalues : numpy.ndarray, optional
        Precomputed eigenvalues of Σ_X.
    """
    lam = np.linalg.eigvalsh(np.asarray(sigma, np.float64)) if eigenvalues is None else eigenvalues
    s2 = float(np.mean(q.w_hat**2)) if sigma2 is None else float(sigma2)
    return q.bits_per_weight - waterfill_rate(np.clip(lam, 0, None), q.wmse, sigma2=s2)


def quantize_layer(
    method: str, w: np.ndarray, sigma: np.ndarray, rate: float, *, seed: int = 0, **kw: object
) -> WeightQuant:
    """Quantize one layer at a target rate with ``method`` in :data:`METHODS`.

    The method's registered quantizer (:data:`METHOD_SPECS`, e.g. ``gptq-rot`` is
    ``gptq:rotate=true``) with ``rate`` and the options ``kw`` (``damp=`` ...);
    ``seed`` is the rotation seed of ``gptq-rot``. ``rtn``, ``gptq`` and ``gptq-rot`` use the
    entropy-coded uniform grid (same coder and side information as WaterSIC; ``e8sic`` codes E8
    points, ``tcqsic`` trellis levels, with the same per-column model index) so that all are compared at the same measured
    rate.

    Returns
    -------
    WeightQuant
        The full result; ``get(METHOD_SPECS[method], ...).encode(w, sigma=sigma)`` stores the
        same bitstream and side information as an :class:`~mmquant.core.Encoded` record.
    """
    from mmquant.core import get

    check_choice(method, "method", METHODS)
    if method == "gptq-rot":
        kw = {**kw, "seed": seed}
    q = get(METHOD_SPECS[method], rate=rate, **kw)
    return q.quantize_weights(w, sigma)  # type: ignore[attr-defined]
