"""Recompute the shipped N(0, 1) Voronoi designs, mmquant/lattices/designs.json.

    python tools/update_designs.py            # recompute every design and write the table
    python tools/update_designs.py --check    # recompute and compare with the shipped table

The table holds the designs of every nested-lattice configuration that ``mmquant compare`` runs
by default and with ``--rates 2,3,4`` (:func:`needed`), computed by
:func:`mmquant.lattices.scales.optimal_design` with ``shipped=False``. Run it after changing
the optimiser (fit_design), its sample or the encoder; the tests recompute entries and fail
when the table is stale. About 2 CPU-minutes with the numba kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mmquant.experiments.compare import default_quantizers
from mmquant.lattices.designs import DESIGNS_FILE, TABLE_VERSION, design_key
from mmquant.lattices.scales import optimal_design
from mmquant.lattices.voronoi import _VoronoiQuantizer

#: Target rates whose configurations get shipped designs besides the defaults (README example).
RATES = (2.0, 3.0, 4.0)

Args = tuple[str, Any, int, str, bool, bool, bool, int]


def needed() -> list[Args]:
    """Arguments of :func:`optimal_design` for every default configuration that needs one."""
    out: dict[str, Args] = {}
    for q in default_quantizers() + default_quantizers(list(RATES)):
        if isinstance(q, _VoronoiQuantizer) and not isinstance(q.betas, tuple) and not q.fit:
            # the arguments the quantizer's ``design`` property passes
            args = (q.lattice_name, q.q, q.k, q.rule, q.dither, q.search, q.mixed, q.group)
            out[design_key(*args)] = args
    return [out[k] for k in sorted(out)]


def entry(args: Args) -> dict[str, Any]:
    """One table entry: the arguments and the freshly computed design."""
    lat, q, k, rule, dithered, search, mixed, group = args
    d = optimal_design(*args, shipped=False)
    return {
        "lattice": lat,
        "q": list(q) if isinstance(q, tuple) else int(q),
        "k": int(k),
        "rule": rule,
        "dithered": bool(dithered),
        "search": bool(search),
        "mixed": bool(mixed),
        "group": int(group),
        "qs": [int(v) for v in d.qs],
        "betas": [float(v) for v in d.betas],
        "weights": [int(v) for v in d.weights],
        "budget": int(d.budget),
    }


def dumps(table: dict[str, Any]) -> str:
    """The table as JSON text, one design per line."""
    lines = [json.dumps(e) for e in table["designs"]]
    head = json.dumps({k: v for k, v in table.items() if k != "designs"})[:-1]
    return head + ', "designs": [\n' + ",\n".join(lines) + "\n]}\n"


def main(argv: list[str] | None = None) -> int:
    """Recompute the table; write it, or with ``--check`` compare it (exit 1 if it differs)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = ap.parse_args(argv)
    entries = []
    for args in needed():
        t0 = time.process_time()
        entries.append(entry(args))
        print(f"{design_key(*args)}: {time.process_time() - t0:.1f} s CPU", file=sys.stderr)
    table = {
        "version": TABLE_VERSION,
        "description": "N(0,1) designs of mmquant.lattices.voronoi.optimal_design; "
        "regenerate with `python tools/update_designs.py`",
        "designs": entries,
    }
    text = dumps(table)
    if opts.check:
        if DESIGNS_FILE.read_text() != text:
            print(f"{DESIGNS_FILE} is stale: run tools/update_designs.py", file=sys.stderr)
            return 1
        print(f"{DESIGNS_FILE}: all {len(entries)} designs match", file=sys.stderr)
        return 0
    DESIGNS_FILE.write_text(text)
    print(f"wrote {len(entries)} designs to {DESIGNS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
