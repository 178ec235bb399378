"""Capture of the model's internal matrices: queries/keys per head, linear-layer inputs, Σ_X.

All captured arrays are packed over the **real tokens** (no padding): the tokens of sentence ``s``
are rows ``offsets[s]:offsets[s+1]``. Values are those the model actually used, so the capture of a
quantized model holds the quantized queries/keys and activations.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mmquant.models.calibration import calibration_sentences
from mmquant.models.minilm import ForwardHooks, MiniLM
from mmquant.validation import check_int

__all__ = ["Capture", "capture", "calibration_capture", "input_covariance", "save_calibration"]


@dataclass(frozen=True, eq=False)
class Capture:
    """Intermediate values of one forward pass over a list of sentences.

    Attributes
    ----------
    sentences : tuple of str
    lengths : numpy.ndarray
        Tokens per sentence (``[CLS]`` and ``[SEP]`` included), int64.
    embeddings : numpy.ndarray
        ``(N, 384)`` L2-normalised sentence embeddings.
    queries, keys : tuple of numpy.ndarray
        Per layer, ``[tokens, heads, head_dim]`` = ``[T, 12, 32]`` after the projection (bias
        included, before the ``1/√32`` scaling).
    inputs : Mapping[str, numpy.ndarray]
        Linear-layer name → its input ``[tokens, in]`` (query/key/value of a layer share one
        array).
    covariances : Mapping[str, numpy.ndarray]
        Linear-layer name → ``Σ_X = E[x xᵀ] = XᵀX / T`` in float64 (``in × in``), over real tokens;
        computed on first access and kept (read-only).
    """

    sentences: tuple[str, ...]
    lengths: np.ndarray
    embeddings: np.ndarray
    queries: tuple[np.ndarray, ...]
    keys: tuple[np.ndarray, ...]
    inputs: Mapping[str, np.ndarray]
    covariances: Mapping[str, np.ndarray]

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each sentence, plus the total token count at the end (``N + 1`` entries)."""
        return np.concatenate([[0], np.cumsum(self.lengths)])

    @property
    def num_tokens(self) -> int:
        """Total number of real tokens."""
        return int(self.lengths.sum())

    def head(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """Queries and keys ``[tokens, head_dim]`` of one head (all sentences packed)."""
        return self.queries[layer][:, head, :], self.keys[layer][:, head, :]

    def attention_logits(self, layer: int, sentence: int) -> np.ndarray:
        """Attention logits ``Q_h K_hᵀ / √d`` of one sentence, ``[heads, T, T]`` in float64."""
        o = self.offsets
        sl = slice(int(o[sentence]), int(o[sentence + 1]))
        q = self.queries[layer][sl].astype(np.float64).transpose(1, 0, 2)
        k = self.keys[layer][sl].astype(np.float64).transpose(1, 2, 0)
        return (q @ k) / np.sqrt(q.shape[-1])

    def attention_probs(self, layer: int, sentence: int) -> np.ndarray:
        """Attention weights ``softmax(logits)`` of one sentence, ``[heads, T, T]`` (rows sum to 1)."""
        lg = self.attention_logits(layer, sentence)
        lg -= lg.max(axis=-1, keepdims=True)
        p = np.exp(lg)
        return p / p.sum(axis=-1, keepdims=True)


def input_covariance(x: np.ndarray) -> np.ndarray:
    """``Σ_X = XᵀX / T`` in float64 for ``X`` of shape ``[T, in]`` (uncentred second moment)."""
    x64 = np.asarray(x, dtype=np.float64)
    cov = (x64.T @ x64) / x64.shape[0]
    return 0.5 * (cov + cov.T)


class _LazyCovariances(Mapping):
    """Name → Σ_X, computed from the captured inputs on first access (shared inputs share Σ_X)."""

    def __init__(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._inputs = inputs
        self._done: dict[int, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        x = self._inputs[name]
        if id(x) not in self._done:
            cov = input_covariance(x)
            cov.flags.writeable = False
            self._done[id(x)] = cov
        return self._done[id(x)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._inputs)

    def __len__(self) -> int:
        return len(self._inputs)


class _Recorder(ForwardHooks):
    def __init__(self) -> None:
        self.inputs: dict[str, list[np.ndarray]] = {}
        self.q: dict[int, list[np.ndarray]] = {}
        self.k: dict[int, list[np.ndarray]] = {}
        self.lengths: list[np.ndarray] = []
        self.emb: list[np.ndarray] = []

    def linear_input(self, name: str, x: np.ndarray) -> None:
        self.inputs.setdefault(name, []).append(x)

    def queries_keys(self, layer: int, q: np.ndarray, k: np.ndarray) -> None:
        self.q.setdefault(layer, []).append(q)
        self.k.setdefault(layer, []).append(k)

    def batch_done(self, lengths: np.ndarray, embeddings: np.ndarray) -> None:
        self.lengths.append(lengths)
        self.emb.append(embeddings)


def capture(model: MiniLM, sentences: Sequence[str], *, batch_size: int = 64) -> Capture:
    """Run ``model`` on ``sentences`` and record its queries, keys and linear-layer inputs.

    Parameters
    ----------
    model : MiniLM
        Possibly quantized model (the capture then holds the quantized values).
    sentences : sequence of str
    batch_size : int
        Sentences per forward batch.

    Returns
    -------
    Capture
    """
    rec = _Recorder()
    model.encode(sentences, batch_size=batch_size, hooks=rec)
    inputs: dict[str, np.ndarray] = {}
    by_id: dict[tuple[int, ...], str] = {}
    for name, parts in rec.inputs.items():
        key = tuple(id(p) for p in parts)
        if key in by_id:  # query/key/value share their input: one array, one covariance
            inputs[name] = inputs[by_id[key]]
            continue
        by_id[key] = name
        arr = np.concatenate(parts, axis=0)
        arr.flags.writeable = False
        inputs[name] = arr
    layers = sorted(rec.q)
    qs = tuple(np.concatenate(rec.q[i], axis=0) for i in layers)
    ks = tuple(np.concatenate(rec.k[i], axis=0) for i in layers)
    emb = np.concatenate(rec.emb, axis=0)
    for a in (*qs, *ks, emb):
        a.flags.writeable = False
    return Capture(
        sentences=tuple(sentences),
        lengths=np.concatenate(rec.lengths),
        embeddings=emb,
        queries=qs,
        keys=ks,
        inputs=types.MappingProxyType(inputs),
        covariances=_LazyCovariances(types.MappingProxyType(inputs)),
    )


@lru_cache(maxsize=4)
def _calibration_capture(n: int, dtype: str, max_length: int, split: str) -> Capture:
    model = MiniLM.load(dtype=np.dtype(dtype), max_length=max_length)
    return capture(model, calibration_sentences(n, split=split))


def calibration_capture(
    n_sentences: int = 64,
    dtype: type | str = "float32",
    max_length: int = 128,
    split: str = "calibration",
) -> Capture:
    """Capture of the unquantized model on ``n_sentences`` calibration sentences (cached).

    The result is cached in-process (``functools.lru_cache`` on the arguments, 4 entries), so
    every consumer (the ``minilm:*`` data sources, GPTQ/WaterSIC's Σ_X, experiments) shares one
    forward pass. Its arrays are read-only.

    Parameters
    ----------
    n_sentences : int
        Number of sentences, chosen by :func:`~mmquant.models.calibration.calibration_sentences`.
    dtype : {"float32", "float64"}
        Precision of the forward pass.
    max_length : int
        Longest tokenized sentence.
    split : {"calibration", "evaluation"}
        Half of the sentence pool to draw from.
    """
    n = check_int(n_sentences, "n_sentences", 1)
    m = check_int(max_length, "max_length", 3, 512)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return _calibration_capture(n, dt.name, m, split)


def save_calibration(
    path: str | os.PathLike[str],
    n_sentences: int = 64,
    *,
    max_length: int = 128,
    split: str = "calibration",
) -> Path:
    """Write a calibration file of the bundled MiniLM: Σ_X of every linear layer's inputs.

    The covariances come from :func:`calibration_capture` (float32 forward pass) and are stored
    under the names of the weight tensors of the model's ``model.safetensors``
    (``encoder.layer.0.attention.self.query.weight`` ...), with the number of tokens averaged,
    by :func:`mmquant.covariances.save_covariances`; ``mmquant audit --calib`` reads it.

    Parameters
    ----------
    path : path-like
        Output ``.safetensors`` file.
    n_sentences : int
        Calibration sentences.
    max_length : int
        Longest tokenized sentence.
    split : {"calibration", "evaluation"}
        Half of the sentence pool to draw from.

    Returns
    -------
    Path
        The file written.
    """
    from mmquant.covariances import save_covariances

    cap = calibration_capture(n_sentences, "float32", max_length, split)
    covs = {f"{name}.weight": cap.covariances[name] for name in cap.inputs}
    tokens = dict.fromkeys(covs, cap.num_tokens)
    return save_covariances(path, covs, tokens)
