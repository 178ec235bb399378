"""The shipped N(0, 1) designs (mmquant/lattices/designs.json) are what the optimiser computes."""

from __future__ import annotations

import json

import pytest

from mmquant.experiments.compare import default_quantizers
from mmquant.lattices import designs
from mmquant.lattices.scales import Design, optimal_design
from mmquant.lattices.voronoi import _VoronoiQuantizer


def _default_args() -> list[tuple]:
    """optimal_design arguments of every lattice configuration mmquant compare runs by default."""
    out = []
    for q in default_quantizers() + default_quantizers([2.0, 3.0, 4.0]):
        if isinstance(q, _VoronoiQuantizer) and not isinstance(q.betas, tuple):
            out.append((q.lattice_name, q.q, q.k, q.rule, q.dither, q.search, q.mixed, q.group))
    return out


def _shipped(args: tuple) -> Design:
    found = designs.lookup(*args)
    assert found is not None, f"no shipped design for {designs.design_key(*args)}"
    return Design(*found)


def test_every_default_configuration_has_a_shipped_design():
    args = _default_args()
    assert len(args) >= 6  # e8, d4, zn, block by block and in groups
    for a in args:
        d = _shipped(a)
        assert optimal_design(*a) == d  # read from the table
        assert len(d.betas) == a[2] and list(d.betas) == sorted(d.betas)


def test_recomputed_design_matches_the_shipped_one_exactly():
    args = ("zn", 14, 4, "least-error", False, True, False, 1)
    assert optimal_design(*args, shipped=False) == _shipped(args)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(designs.table()))
def test_every_shipped_design_recomputes_exactly(key):
    e = designs.table()[key]
    q = tuple(e["q"]) if isinstance(e["q"], list) else e["q"]
    args = (e["lattice"], q, e["k"], e["rule"], e["dithered"], e["search"], e["mixed"], e["group"])
    assert optimal_design(*args, shipped=False) == _shipped(args)


def test_key_and_lookup():
    assert designs.design_key("e8", 14, 4, "least-error", False, True, False, 32) == (
        "e8:q=14,k=4,rule=least-error,dithered=false,search=true,mixed=false,group=32"
    )
    assert designs.design_key("e8", (13, 14), 2, "no-overload", True, True, False, 1).startswith(
        "e8:q=13;14,k=2,rule=no-overload,dithered=true"
    )
    assert designs.lookup("e8", 14, 4, "least-error", True, True, False, 1) is None  # dithered
    assert designs.lookup("e8", 3, 2, "least-error", False, True, False, 1) is None


def test_table_file_is_valid_json_with_exact_floats():
    data = json.loads(designs.DESIGNS_FILE.read_text())
    assert data["version"] == designs.TABLE_VERSION
    for e in data["designs"]:
        for b in e["betas"]:
            assert float(repr(b)) == b
        assert len(e["qs"]) == len(e["betas"]) == e["k"]
