"""Named sources of matrix pairs for ``mmquant compare --data NAME``.

A source returns a list of :class:`MatrixPair` ``(label, A, B)`` whose product of interest is
``AᵀB``: ``A`` is ``n×a``, ``B`` is ``n×b`` and ``n`` is the inner dimension (the axis quantizers work
along). Sources register with :func:`data_source`; the ones in :data:`DATA_MODULES` are imported on
first use (the bundled-model sources need the ``models`` extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmquant.validation import check_int

__all__ = ["MatrixPair", "data_source", "data_sources", "gaussian_pair", "load_data"]

#: Modules whose import registers more data sources.
DATA_MODULES: list[str] = ["mmquant.models.data"]

_SOURCES: dict[str, tuple[Callable[..., list[MatrixPair]], str]] = {}


@dataclass(frozen=True)
class MatrixPair:
    """Two matrices whose product ``AᵀB`` is to be approximated.

    Attributes
    ----------
    label : str
        Short name shown in tables ("gaussian", "layer3.head7" ...).
    a : numpy.ndarray
        ``n×a`` matrix.
    b : numpy.ndarray
        ``n×b`` matrix with the same ``n``.
    """

    label: str
    a: np.ndarray
    b: np.ndarray


def data_source(name: str, description: str = "") -> Callable:
    """Decorator registering ``f(seed: int) -> list[MatrixPair]`` under ``name``."""

    def deco(fn: Callable[..., list[MatrixPair]]) -> Callable[..., list[MatrixPair]]:
        _SOURCES[name] = (fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def data_sources() -> dict[str, str]:
    """Name → description of every data source (bundled-model sources only if installed)."""
    for mod in DATA_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:
            continue
    return {k: v[1] for k, v in sorted(_SOURCES.items())}


def load_data(name: str, seed: int = 0) -> list[MatrixPair]:
    """Load the matrix pairs of the data source ``name`` (``"gaussian"``, ``"minilm:qk"`` ...)."""
    names = data_sources()
    if name not in _SOURCES:
        raise ValueError(f"unknown data source {name!r}; available: {', '.join(names)}")
    return _SOURCES[name][0](seed=seed)


def gaussian_pair(n: int = 4096, a: int = 256, b: int = 256, seed: int = 0) -> MatrixPair:
    """iid N(0, 1) matrices ``A`` (n×a) and ``B`` (n×b) in float32, from ``seed``."""
    n = check_int(n, "n", 1)
    a = check_int(a, "a", 1)
    b = check_int(b, "b", 1)
    rng = np.random.default_rng(seed)
    return MatrixPair(
        "gaussian",
        rng.standard_normal((n, a), dtype=np.float32),
        rng.standard_normal((n, b), dtype=np.float32),
    )


@data_source("gaussian", "iid N(0,1) A and B, 4096×256 each (the default)")
def _gaussian(seed: int = 0) -> list[MatrixPair]:
    return [gaussian_pair(seed=seed)]
