"""Matrix pairs from the bundled MiniLM for ``mmquant compare --data minilm:qk | minilm:weights``.

Both sources use the cached capture of the float32 model on 64 calibration sentences
(:func:`~mmquant.models.capture.calibration_capture`, about 1900 tokens). A pair ``(A, B)`` stands
for the product ``AᵀB`` with ``A`` of shape ``n×a``, ``B`` of shape ``n×b``; quantizers work along
``n`` (they see ``Aᵀ`` and ``Bᵀ``).

``minilm:qk``
    Attention logits ``Q_h K_hᵀ = (Q_hᵀ)ᵀ(K_hᵀ)`` of every layer and head: ``A = Q_hᵀ`` and
    ``B = K_hᵀ``, both ``32 × tokens`` (``n = 32`` = head dimension; 6·12 = 72 pairs). Tokens of
    all sentences are pooled (the cross-sentence entries of the product are included: the error
    statistics are those of the same matrices). By default a seeded random subset of
    ``max_tokens = 512`` tokens is used per pair so that ``compare`` stays fast.
``minilm:weights``
    Output ``W X`` of every linear layer (36 pairs): ``A = Wᵀ`` (``in × out``) and ``B = Xᵀ``
    (``in × tokens``), ``n = in`` (384, or 1536 for ``output.dense``). By default a seeded random
    subset of ``max_rows = 64`` output rows of ``W`` and ``max_tokens = 64`` tokens is used per
    layer (each row of ``W`` and each token is quantized on its own by row/group quantizers, so the
    subset has the statistics of the whole).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmquant.data import MatrixPair, data_source
from mmquant.models.capture import calibration_capture
from mmquant.models.minilm import MiniLM
from mmquant.validation import check_int

__all__ = ["qk_pairs", "weight_pairs"]


def _subset(total: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    if k is None or k >= total:
        return np.arange(total)
    return np.sort(rng.choice(total, size=k, replace=False))


def qk_pairs(
    n_sentences: int = 64,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_tokens: int | None = 512,
    seed: int = 0,
) -> list[MatrixPair]:
    """Query/key pairs ``A = Q_hᵀ``, ``B = K_hᵀ`` (``32 × tokens``), labelled ``"L{i}.H{h}"``.

    Parameters
    ----------
    n_sentences : int
        Calibration sentences captured (float32 model).
    layers, heads : sequence of int, optional
        Which layers (0..5) and heads (0..11); default all.
    max_tokens : int or None
        Tokens kept per pair (seeded random subset, the same for ``Q`` and ``K``); None = all.
    seed : int
        Seed of the token subset.
    """
    cap = calibration_capture(check_int(n_sentences, "n_sentences", 1))
    n_layers, n_heads = len(cap.queries), cap.queries[0].shape[1]
    layers = range(n_layers) if layers is None else layers
    heads = range(n_heads) if heads is None else heads
    rng = np.random.default_rng(seed)
    out = []
    for i in layers:
        for h in heads:
            if not (0 <= i < n_layers and 0 <= h < n_heads):
                raise ValueError(f"layer {i} / head {h} out of range ({n_layers} × {n_heads})")
            q, k = cap.head(i, h)
            idx = _subset(q.shape[0], max_tokens, rng)
            out.append(
                MatrixPair(
                    f"L{i}.H{h}", np.ascontiguousarray(q[idx].T), np.ascontiguousarray(k[idx].T)
                )
            )
    return out


def weight_pairs(
    n_sentences: int = 64,
    *,
    names: Sequence[str] | None = None,
    max_rows: int | None = 64,
    max_tokens: int | None = 64,
    seed: int = 0,
) -> list[MatrixPair]:
    """Linear-layer pairs ``A = Wᵀ`` (``in × out``), ``B = Xᵀ`` (``in × tokens``), so ``AᵀB = W X``.

    Parameters
    ----------
    n_sentences : int
        Calibration sentences captured (float32 model).
    names : sequence of str, optional
        Linear layers (``"encoder.layer.0.output.dense"`` ...); default all 36.
    max_rows, max_tokens : int or None
        Output rows of ``W`` and tokens of ``X`` kept per layer (seeded random subsets); None = all.
    seed : int
        Seed of the subsets.
    """
    cap = calibration_capture(check_int(n_sentences, "n_sentences", 1))
    model = MiniLM.load()
    names = model.linear_names if names is None else names
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        w = model.weight(name)
        x = cap.inputs[name]
        rows = _subset(w.shape[0], max_rows, rng)
        toks = _subset(x.shape[0], max_tokens, rng)
        label = _short_label(name)
        out.append(
            MatrixPair(label, np.ascontiguousarray(w[rows].T), np.ascontiguousarray(x[toks].T))
        )
    return out


_SHORT = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}


def _short_label(name: str) -> str:
    """``"encoder.layer.3.intermediate.dense"`` → ``"L3.ffn_in"``."""
    rest = name.removeprefix("encoder.layer.")
    layer, _, kind = rest.partition(".")
    return f"L{layer}.{_SHORT.get(kind, kind)}"


@data_source("minilm:qk", "MiniLM queries/keys per layer and head (72 pairs of 32×512)")
def _minilm_qk(seed: int = 0) -> list[MatrixPair]:
    return qk_pairs(seed=seed)


@data_source("minilm:weights", "MiniLM linear layers W·X (36 pairs, 64 rows of W × 64 tokens of X)")
def _minilm_weights(seed: int = 0) -> list[MatrixPair]:
    return weight_pairs(seed=seed)
