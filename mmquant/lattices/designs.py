"""The shipped table of N(0, 1) Voronoi code designs (``designs.json``, package data).

:func:`mmquant.lattices.scales.optimal_design` is deterministic (a fixed-seed N(0, 1) sample and
a deterministic optimiser whose numba and numpy paths agree bit for bit) but costs seconds to
minutes per design (the grouped designs most). The designs of the configurations that
``mmquant compare`` runs (its defaults, and those of ``--rates 2,3,4``) are computed once and
shipped in ``designs.json``; :func:`optimal_design` reads them from there first and computes any
other design as before. ``python tools/update_designs.py`` recomputes the table (``--check``
compares instead of writing) and the tests recompute entries and compare them exactly.

Each entry holds the arguments of :func:`optimal_design` (``lattice``, ``q``, ``k``, ``rule``,
``dithered``, ``search``, ``mixed``, ``group``) and the design (``qs``, ``betas``, ``weights``,
``budget``); floats are written with :func:`repr`, which reads back to the same float64.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

__all__ = ["DESIGNS_FILE", "design_key", "lookup", "table"]

#: The shipped table (package data, see ``[tool.setuptools.package-data]`` in pyproject.toml).
DESIGNS_FILE = Path(__file__).with_name("designs.json")

#: Version of the table's layout.
TABLE_VERSION = 1


def design_key(
    lattice_name: str,
    q: int | tuple[int, ...],
    k: int,
    rule: str,
    dithered: bool,
    search: bool,
    mixed: bool,
    group: int,
) -> str:
    """Canonical text of the arguments of :func:`~mmquant.lattices.scales.optimal_design`."""
    qs = ";".join(str(int(v)) for v in q) if isinstance(q, tuple) else str(int(q))
    flags = f"dithered={bool(dithered)},search={bool(search)},mixed={bool(mixed)}"
    return f"{lattice_name}:q={qs},k={int(k)},rule={rule},{flags},group={int(group)}".lower()


def _entry_key(e: dict[str, Any]) -> str:
    q = e["q"]
    return design_key(
        e["lattice"],
        tuple(q) if isinstance(q, list) else q,
        e["k"],
        e["rule"],
        e["dithered"],
        e["search"],
        e["mixed"],
        e["group"],
    )


@functools.cache
def table() -> dict[str, dict[str, Any]]:
    """The shipped designs by :func:`design_key` (empty if the file is missing)."""
    try:
        data = json.loads(DESIGNS_FILE.read_text())
    except FileNotFoundError:
        return {}
    if data.get("version") != TABLE_VERSION:
        raise ValueError(
            f"{DESIGNS_FILE}: table version {data.get('version')!r}, expected {TABLE_VERSION}"
        )
    return {_entry_key(e): e for e in data["designs"]}


def lookup(
    lattice_name: str,
    q: int | tuple[int, ...],
    k: int,
    rule: str,
    dithered: bool,
    search: bool,
    mixed: bool,
    group: int,
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...], int] | None:
    """The shipped design for these arguments as ``(qs, betas, weights, budget)``, or ``None``."""
    e = table().get(design_key(lattice_name, q, k, rule, dithered, search, mixed, group))
    if e is None:
        return None
    return (
        tuple(int(v) for v in e["qs"]),
        tuple(float(v) for v in e["betas"]),
        tuple(int(v) for v in e["weights"]),
        int(e["budget"]),
    )
