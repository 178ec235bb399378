"""``mmquant compare``: every registered quantizer on the same data, against the limit Γ(R)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmquant.cli import app, make_console
from mmquant.cli.checks import check_output_file, parse_rates, text
from mmquant.data import load_data
from mmquant.experiments.base import write_json
from mmquant.experiments.compare import (
    CompareRow,
    compare,
    default_quantizers,
    plot_compare,
    start_warming,
)
from mmquant.kernels import on_compile

__all__ = ["compare_cmd", "rows_table"]

#: Shown while numba compiles a kernel (first use after installation; cached afterwards).
COMPILING = "compiling kernels (first run, cached afterwards)…"


def _figure(x: float) -> str:
    """A speed with two decimals, or two significant digits below 0.1 (0.055, not 0.0)."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def rows_table(rows: list[CompareRow], title: str) -> Table:
    """A rich table of compare rows."""
    t = Table(title=title)
    t.add_column("quantizer", style="cyan")
    for col in (
        "bits/entry",
        "product error",
        "SQNR dB",
        "gap dB",
        "gap bits",
        "encode M/s",
        "product ×f32",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r.spec,
            f"{r.bits_per_entry:.3f}",
            f"{r.error:.4e}",
            f"{r.sqnr_db:.2f}",
            f"{r.gap_db:.2f}",
            f"{r.gap_bits:.3f}",
            _figure(r.encode_meps),
            "—" if math.isnan(r.product_speed) else _figure(r.product_speed),
        )
    return t


def _load_pairs(data: str, seed: int) -> list:
    """Matrix pairs of a registered source, or of matrix files (``A,B``)."""
    from mmquant.checkpoints.matrices import file_pairs, is_file_data

    if is_file_data(data):
        return file_pairs(data)
    return load_data(data, seed=seed)


@app.command("compare")
def compare_cmd(
    data: str = typer.Option(
        "gaussian",
        help="Data source: gaussian, minilm:qk, minilm:weights; or matrix files A,B (product "
        "A·Bᵀ, rows along the inner dimension): FILE.npy, FILE.npz[:KEY], FILE.safetensors:TENSOR; "
        "several pairs separated by ';'.",
    ),
    rates: str = typer.Option(
        None, help="Comma-separated target rates in bits/entry (default: each family's defaults)."
    ),
    seed: int = typer.Option(
        0, min=0, help="Seed of the data (and of the quantizers' shared randomness)."
    ),
    only: str = typer.Option(None, help="Comma-separated family names to run (default: all)."),
    json_path: Path = typer.Option(None, "--json", help="Write the results as JSON to this file."),
    plot: Path = typer.Option(None, help="Write a PNG of product error vs rate with Γ(R)."),
) -> None:
    """Run every registered quantizer on the same matrices and rank them by gap to Γ(R)."""
    if json_path is not None:
        check_output_file(json_path, "--json", (".json",))
    if plot is not None:
        check_output_file(plot, "--plot", (".png",))
    console = make_console()
    rate_list = parse_rates(rates)
    pairs = _load_pairs(data, seed)
    qs = default_quantizers(rate_list)
    if only:
        fams = {f.strip() for f in only.split(",") if f.strip()}
        qs = [q for q in qs if q.name in fams]
    if not qs:
        raise ValueError("no quantizer configuration matches the requested rates/families")
    tty = sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not tty,
    ) as prog:
        task = prog.add_task("quantizing", total=len(qs))
        shown = {"desc": "quantizing", "told": False}

        def done(spec: str) -> None:
            shown["desc"] = spec
            prog.update(task, advance=1, description=spec)

        warmer: list = []

        def compiling(name: str) -> None:
            if not warmer:  # kernels are compiled: a second process compiles from the list's end
                warmer.append(start_warming([q.spec for q in qs], pairs[0].a.shape[0]))
            if tty:
                prog.update(task, description=COMPILING)
            elif not shown["told"]:  # once, without the progress bar (pipes, CI logs)
                make_console(stderr=True).print(text(COMPILING))
            shown["told"] = True

        def compiled(name: str, seconds: float) -> None:
            prog.update(task, description=shown["desc"])

        try:
            with on_compile(compiling, compiled):
                rows = compare(pairs, qs, progress=done)
        finally:
            if warmer and warmer[0] is not None:
                warmer[0].kill()
                warmer[0].wait()
    a, b = pairs[0].a, pairs[0].b
    shape = f"A {a.shape[0]}×{a.shape[1]}, B {b.shape[0]}×{b.shape[1]}"
    title = (
        f"data={data} ({len(pairs)} pair(s), first: {shape}), seed={seed}; sorted by gap to Γ(R)"
    )
    console.print(rows_table(rows, title))
    if json_path is not None:
        record = {
            "name": "compare",
            "description": f"every quantizer on data source {data!r}",
            "data": data,
            "seed": seed,
            "pairs": len(pairs),
            "results": [r.to_json() for r in rows],
        }
        write_json(json_path, record)
        console.print(text(f"wrote {json_path}"))
    if plot is not None:
        plot_compare(rows, plot, title=f"{data}: product error vs rate")
        console.print(text(f"wrote {plot}"))
