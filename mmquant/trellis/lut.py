"""The trained lookup-table codes of the bitshift trellis (package data ``lut.json``).

A table holds ``2^Q`` V-vectors; the trellis state ``s`` reads entry
:func:`mmquant.trellis.codes.lut_index` ``(s)`` (a hash of the state). One table per (bits per
entry k, entries per step V), trained by ``tools/train_trellis_lut.py``: alternate Viterbi
encoding of N(0, 1) sequences with the current table and centroid updates (every entry becomes
the mean of the data vectors coded by the states that read it), from the 1MAD code's values.
The file records how each table was made; ``tests/trellis/test_trellis.py`` retrains one and
checks that it matches. The stratified code (:mod:`mmquant.trellis.codes`) is better at every rate.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["lut_info", "lut_table", "trained"]


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    text = resources.files("mmquant.trellis").joinpath("lut.json").read_text()
    return json.loads(text)


def lut_info() -> dict[str, Any]:
    """How the tables were trained (the ``"training"`` record of the file)."""
    return dict(_load()["training"])


def trained() -> list[tuple[int, int]]:
    """The (k, V) pairs that have a trained table."""
    return sorted(tuple(int(v) for v in key[1:].split("_V")) for key in _load()["tables"])


def lut_table(k: int, V: int) -> np.ndarray:
    """The trained table for ``k`` bits per entry and ``V`` entries per step (float32 (2^Q, V)).

    Raises
    ------
    ValueError
        No table was trained for (k, V); the message lists those that were.
    """
    key = f"k{int(k)}_V{int(V)}"
    tables = _load()["tables"]
    if key not in tables:
        have = ", ".join(f"k={a},V={b}" for a, b in trained())
        raise ValueError(f"no trained lookup table for k={k}, V={V} (trained: {have})")
    return np.asarray(tables[key], np.float32).reshape(-1, int(V))
