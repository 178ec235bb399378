"""Matrix pairs from the bundled MiniLM for ``mmquant compare --data minilm:qk | minilm:weights``.

Both sources use the cached capture of the float32 model on 64 calibration sentences
(:func:`~mmquant.models.capture.calibration_capture`, about 1900 tokens). A pair ``(A, B)`` stands
for the product ``AᵀB`` with ``A`` of shape ``n×a``, ``B`` of shape ``n×b``; quantizers work along
``n`` (they see ``Aᵀ`` and ``Bᵀ``).

``minilm:qk`` (12 pairs, ≈1.4 M entries)
    Attention logits ``Q_h K_hᵀ = (Q_hᵀ)ᵀ(K_hᵀ)``: ``A = Q_hᵀ`` and ``B = K_hᵀ``, both
    ``32 × tokens`` (``n = 32``, the head dimension). Every layer, with ``heads_per_layer = 2``
    heads drawn with the seed; all tokens of the 64 sentences are pooled (the cross-sentence
    entries of the product are included: same matrices, same error statistics).
``minilm:weights`` (24 pairs, ≈2.1 M entries)
    Output ``W X`` of the linear layers: ``A = Wᵀ`` (``in × out``) and ``B = Xᵀ`` (``in × tokens``),
    ``n = in`` (384, or 1536 for ``output.dense``). Query, key and value share their input and are
    taken as one fused ``[1152, 384]`` weight (``fuse_qkv``), so each layer gives 4 pairs
    (``qkv``, ``attn_out``, ``ffn_in``, ``ffn_out``). A seeded random subset of
    ``max_rows = 64`` rows of ``W`` and ``max_tokens = 64`` tokens is used per pair (row/group
    quantizers treat each row of ``W`` and each token on its own, so a subset has the statistics
    of the whole; a per-tensor scale sees only the subset).

The default sizes keep ``mmquant compare`` on these sources about as fast as on the Gaussian
default: few pairs (the per-call overhead of a quantizer counts once per pair and side) with about
as many entries. :func:`qk_pairs` and :func:`weight_pairs` build any other selection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmquant.data import MatrixPair, data_source
from mmquant.models.capture import calibration_capture
from mmquant.models.files import short_layer_name
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
    heads_per_layer: int | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
) -> list[MatrixPair]:
    """Query/key pairs ``A = Q_hᵀ``, ``B = K_hᵀ`` (``32 × tokens``), labelled ``"L{i}.H{h}"``.

    Parameters
    ----------
    n_sentences : int
        Calibration sentences captured (float32 model).
    layers, heads : sequence of int, optional
        Which layers (0..5) and heads (0..11); default all.
    heads_per_layer : int, optional
        Draw this many of ``heads`` per layer at random (with ``seed``); default: all of them.
    max_tokens : int, optional
        Keep a seeded random subset of the tokens (the same for ``Q`` and ``K``); default all.
    seed : int
        Seed of the head and token subsets.
    """
    cap = calibration_capture(check_int(n_sentences, "n_sentences", 1))
    n_layers, n_heads = len(cap.queries), cap.queries[0].shape[1]
    layers = list(range(n_layers)) if layers is None else list(layers)
    heads = list(range(n_heads)) if heads is None else list(heads)
    for i in layers:
        if not 0 <= i < n_layers:
            raise ValueError(f"layer {i} out of range [0, {n_layers - 1}]")
    for h in heads:
        if not 0 <= h < n_heads:
            raise ValueError(f"head {h} out of range [0, {n_heads - 1}]")
    rng = np.random.default_rng(seed)
    out = []
    for i in layers:
        chosen = heads
        if heads_per_layer is not None:
            k = check_int(heads_per_layer, "heads_per_layer", 1, len(heads))
            chosen = [heads[j] for j in _subset(len(heads), k, rng)]
        for h in chosen:
            q, k_ = cap.head(i, h)
            idx = _subset(q.shape[0], max_tokens, rng)
            out.append(
                MatrixPair(
                    f"L{i}.H{h}", np.ascontiguousarray(q[idx].T), np.ascontiguousarray(k_[idx].T)
                )
            )
    return out


def weight_pairs(
    n_sentences: int = 64,
    *,
    names: Sequence[str] | None = None,
    fuse_qkv: bool = True,
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
    fuse_qkv : bool
        Stack the query, key and value weights of a layer (all three must be in ``names``) into
        one ``[1152, 384]`` matrix, labelled ``"L{i}.qkv"``: they share the input ``X``.
    max_rows, max_tokens : int or None
        Rows of ``W`` and tokens of ``X`` kept per pair (seeded random subsets); None = all.
    seed : int
        Seed of the subsets.
    """
    cap = calibration_capture(check_int(n_sentences, "n_sentences", 1))
    model = MiniLM.load()
    names = list(model.linear_names if names is None else names)
    groups: list[tuple[str, list[str]]] = []
    done: set[str] = set()
    for name in names:
        model.weight(name)  # KeyError naming the layer if unknown
        if name in done:
            continue
        prefix = name.rpartition(".")[0]
        trio = [f"{prefix}.{n}" for n in ("query", "key", "value")]
        if fuse_qkv and prefix.endswith("attention.self") and all(t in names for t in trio):
            groups.append((short_layer_name(prefix + ".query").replace(".query", ".qkv"), trio))
            done.update(trio)
        else:
            groups.append((short_layer_name(name), [name]))
            done.add(name)
    rng = np.random.default_rng(seed)
    out = []
    for label, members in groups:
        w = np.concatenate([model.weight(n) for n in members], axis=0)
        x = cap.inputs[members[0]]
        rows = _subset(w.shape[0], max_rows, rng)
        toks = _subset(x.shape[0], max_tokens, rng)
        out.append(
            MatrixPair(label, np.ascontiguousarray(w[rows].T), np.ascontiguousarray(x[toks].T))
        )
    return out


@data_source("minilm:qk", "MiniLM queries/keys: 6 layers × 2 heads, 32×~1900 each (12 pairs)")
def _minilm_qk(seed: int = 0) -> list[MatrixPair]:
    return qk_pairs(heads_per_layer=2, seed=seed)


@data_source(
    "minilm:weights", "MiniLM linear layers W·X, fused QKV: 24 pairs of 64 rows × 64 tokens"
)
def _minilm_weights(seed: int = 0) -> list[MatrixPair]:
    return weight_pairs(seed=seed)
