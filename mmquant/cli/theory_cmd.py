"""``mmquant theory ...``: the limits, as tables and figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from mmquant.cli import app, make_console
from mmquant.cli.checks import check_input_file, check_output_file, parse_rates, plain, text
from mmquant.experiments.plots import plot_gamma
from mmquant.theory.matmul_rd import GAMMA_R_STAR, R_STAR, gamma

__all__ = ["gamma_cmd", "read_points"]

theory_app = typer.Typer(
    help="Information-theoretic limits (tables and figures).", no_args_is_help=True
)
app.add_typer(theory_app, name="theory")


def read_points(path: Path) -> list[dict]:
    """The ``results`` of a ``mmquant compare --json`` file, checked for :func:`mmquant.experiments.plots.plot_gamma`.

    Raises
    ------
    ValueError
        Not JSON, no ``results`` list, or a row without a string ``family`` and finite
        ``bits_per_entry`` and ``error``.
    """
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{plain(path)}: not a JSON file ({exc})") from None
    rows = rec.get("results") if isinstance(rec, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{plain(path)}: not a `mmquant compare --json` file (no results list)")
    for i, row in enumerate(rows):
        ok = isinstance(row, dict) and isinstance(row.get("family"), str)
        for key in ("bits_per_entry", "error"):
            v = row.get(key) if ok else None
            ok = ok and isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = ok and bool(np.isfinite(v))
        if not ok:
            raise ValueError(
                f"{plain(path)}: result {i} needs a family name and finite bits_per_entry and error"
            )
    return rows


@theory_app.command("gamma")
def gamma_cmd(
    rates: str = typer.Option(
        "0.25,0.5,0.906,1,2,3,4,5,6,8", help="Rates to tabulate (bits/entry)."
    ),
    plot: Path = typer.Option(None, help="Write a PNG of Γ(R)."),
    measure: bool = typer.Option(
        True, help="With --plot: add the measured points of every quantizer (Gaussian 2048×128)."
    ),
    points_json: Path = typer.Option(
        None, "--points", help="Take measured points from a `mmquant compare --json` file instead."
    ),
) -> None:
    """Tabulate (and plot) Γ(R), the Gaussian matrix-multiplication rate–distortion function."""

    if points_json is not None:
        check_input_file(points_json, "--points")
    if plot is not None:
        check_output_file(plot, "--plot", (".png",), inputs=[points_json])
    rate_list = parse_rates(rates) or []
    points = None if points_json is None else read_points(points_json)
    console = make_console()

    t = Table(title=f"Γ(R); R* = {R_STAR:.7f}, Γ(R*) = {GAMMA_R_STAR:.7f}")
    for c in ("R (bits/entry)", "Γ(R)", "Γ(R) dB", "2^{−2R}"):
        t.add_column(c, justify="right")
    for r in rate_list:
        g = float(gamma(r))
        t.add_row(f"{r:g}", f"{g:.7g}", f"{10 * np.log10(g):.3f}", f"{2.0 ** (-2 * r):.7g}")
    console.print(t)
    if plot is None:
        return
    if points is None and measure:
        from mmquant.data import gaussian_pair
        from mmquant.experiments.compare import compare, default_quantizers

        pair = gaussian_pair(2048, 128, 128, seed=0)
        with console.status("measuring every quantizer on Gaussian 2048×128 ..."):
            points = [row.to_json() for row in compare([pair], default_quantizers())]
    rmax = max([8.0] + [p["bits_per_entry"] + 0.5 for p in points or []])
    plot_gamma(plot, points, rmax=rmax)
    console.print(text(f"wrote {plot}"))
