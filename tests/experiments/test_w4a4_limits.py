"""The per-layer/per-head limit table of ``reproduce w4a4`` with every kind of code key."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mmquant.models import find_model_dir

try:
    find_model_dir()
    HAVE_MODEL = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_MODEL = False


class _Grid:
    """Rounding to a grid of step ``step`` (a stand-in code with a stated rate)."""

    def __init__(self, step: float, bits: float) -> None:
        self.step, self.bits_per_entry = step, bits

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x) / self.step) * self.step


@pytest.mark.skipif(not HAVE_MODEL, reason="bundled model not installed")
def test_layer_limits_reads_whole_layer_and_per_head_codes() -> None:
    from mmquant.experiments.w4a4 import layer_limits
    from mmquant.models import MiniLM
    from mmquant.models.quantized import quantize_model

    model = MiniLM.load(np.float32)
    name = model.linear_names[0]
    qk = {(0, "q"): _Grid(0.05, 5.0), (0, "k", 3): _Grid(0.1, 4.0)}
    qm = quantize_model(model, activations={name: _Grid(0.02, 6.0)}, qk=qk)
    rec = SimpleNamespace(model=qm, reference=model)
    out = layer_limits(rec, n_sentences=2)
    lay = {r["layer"]: r for r in out["layers"]}
    assert lay[name]["act_bits"] == 6.0 and lay[name]["measured"] > 0
    other = lay[model.linear_names[-1]]
    assert other["act_bits"] == 64.0 and other["measured"] == 0.0
    heads = {(r["layer"], r["head"]): r for r in out["heads"]}
    # the (layer, "q") code covers every head of layer 0; (0, "k", 3) only head 3
    assert all(heads[(0, h)]["q_bits"] == 5.0 for h in range(12))
    assert heads[(0, 3)]["k_bits"] == 4.0 and heads[(0, 2)]["k_bits"] == 64.0
    assert heads[(0, 2)]["measured"] > 0 and heads[(1, 0)]["measured"] == 0.0
    assert heads[(1, 0)]["q_bits"] == 64.0
