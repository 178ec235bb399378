"""The trained lookup-table codes of the bitshift trellis (package data ``lut.json``).

A table holds ``2^Q`` V-vectors; the trellis state ``s`` reads entry
:func:`mmquant.trellis.codes.lut_index` ``(s)`` (a hash of the state). One table per (bits per
entry k, entries per step V), trained by ``tools/train_trellis_lut.py``: alternate Viterbi
encoding of N(0, 1) sequences with the current table and centroid updates (every entry becomes
the mean of the data vectors coded by the states that read it), from the 1MAD code's values.
The file records how each table was made; ``tests/trellis/test_trellis.py`` retrains one and
checks that it matches. The stratified code (:mod:`mmquant.trellis.codes`) is better at every rate.

The trained stratified code ``"tstrat"`` (package data ``tstrat.json``): the stratified code's
values ``Φ⁻¹(u)`` plus a piecewise-linear correction ``c(u)`` of the state's position ``u`` (its
``M`` knot values per (k, V), :func:`strat_knots`), trained by ``tools/train_trellis_strat.py``:
alternate Viterbi encoding of N(0, 1) sequences and the least-squares fit of the knots to the
coded entries, from ``c = 0`` (the stratified code). Every group of states keeps one branch in
each of the 2^k bins' orders (the correction is the same function for all states), and every
state its own value.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["lut_info", "lut_table", "strat_info", "strat_knots", "trained"]


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


@lru_cache(maxsize=1)
def _load_strat() -> dict[str, Any]:
    text = resources.files("mmquant.trellis").joinpath("tstrat.json").read_text()
    return json.loads(text)


def strat_info() -> dict[str, Any]:
    """How the corrections of ``"tstrat"`` were trained (the ``"training"`` record)."""
    return dict(_load_strat()["training"])


def strat_knots(k: int, V: int) -> np.ndarray:
    """The knot values of the correction ``c(u)`` of ``"tstrat"`` for (k, V) (float32 (M,)).

    Raises
    ------
    ValueError
        No correction was trained for (k, V); the message lists those that were.
    """
    key = f"k{int(k)}_V{int(V)}"
    knots = _load_strat()["knots"]
    if key not in knots:
        have = ", ".join(sorted(knots))
        raise ValueError(f"no trained stratified code for k={k}, V={V} (trained: {have})")
    return np.asarray(knots[key], np.float32)
