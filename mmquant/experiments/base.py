"""Experiment registry and the record every experiment returns."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmquant.core import import_plugins

__all__ = [
    "EXPERIMENT_MODULES",
    "ExperimentResult",
    "experiment",
    "experiments",
    "run_experiment",
    "write_json",
]

#: Modules whose import registers experiments.
EXPERIMENT_MODULES: list[str] = [
    "mmquant.experiments.scalar",
    "mmquant.experiments.weight_only",
    "mmquant.experiments.scalar_qk",
    "mmquant.experiments.trellis",
    "mmquant.experiments.w4a4",
]

_EXPERIMENTS: dict[str, tuple[Callable[..., ExperimentResult], str]] = {}


@dataclass
class ExperimentResult:
    """Outcome of one experiment: a table, free-form JSON details and an optional figure.

    Attributes
    ----------
    name : str
        Registry name (``mmquant reproduce NAME``).
    description : str
        What was measured, in one or two sentences (setup, sizes, seeds).
    columns : list of str
        Column headers of the table.
    rows : list of list
        Table rows (numbers or strings), one list per row, in column order.
    details : dict
        Anything else worth keeping in the JSON record (parameters, curves ...).
    plot : callable, optional
        ``plot(path)`` writes the experiment's figure as a PNG.
    """

    name: str
    description: str
    columns: list[str]
    rows: list[list[Any]]
    details: dict[str, Any] = field(default_factory=dict)
    plot: Callable[[str | Path], None] | None = None

    def to_json(self) -> dict[str, Any]:
        """``{name, description, results: {columns, rows}, details}`` with JSON-safe numbers."""
        return _jsonable(
            {
                "name": self.name,
                "description": self.description,
                "results": {"columns": self.columns, "rows": self.rows},
                "details": self.details,
            }
        )

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        write_json(path, self.to_json())


def write_json(path: str | Path, record: Any) -> None:
    """Write a result record as indented JSON (the one writer of the CLI and the experiments).

    NumPy scalars and arrays become numbers and lists, tuples become lists, and non-finite floats
    become the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (strict JSON has no such numbers).
    """
    Path(path).write_text(json.dumps(_jsonable(record), indent=2) + "\n")


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def experiment(
    name: str, description: str = ""
) -> Callable[[Callable[..., ExperimentResult]], Callable[..., ExperimentResult]]:
    """Decorator registering a function ``f(**params) -> ExperimentResult`` under ``name``."""

    def deco(fn: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
        if name in _EXPERIMENTS and _EXPERIMENTS[name][0] is not fn:
            raise ValueError(f"experiment {name!r} is already registered")
        _EXPERIMENTS[name] = (fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def experiments() -> dict[str, str]:
    """Name → one-line description of every registered experiment."""
    import_plugins(EXPERIMENT_MODULES, "experiments (mmquant.experiments.base.EXPERIMENT_MODULES)")
    return {k: v[1] for k, v in sorted(_EXPERIMENTS.items())}


def run_experiment(name: str, **params: Any) -> ExperimentResult:
    """Run the experiment ``name`` with keyword parameters."""
    names: Sequence[str] = list(experiments())
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(names) or '(none)'}")
    return _EXPERIMENTS[name][0](**params)
