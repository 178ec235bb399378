"""``mmquant audit`` / ``quantize-model`` / ``calibrate``: any checkpoint, layer by layer.

``audit PATH`` measures every selected tensor with every candidate quantizer against the limits
(and, with ``--budget``, allocates bits); ``quantize-model PATH --out DIR`` writes the quantized
checkpoint; ``calibrate OUT`` writes the Σ_X calibration file of the bundled MiniLM. Tensors are
read one at a time from the path; ``--workers`` / ``--scheduler`` run them on Dask.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mmquant.cli import app, make_console
from mmquant.cli.checks import check_input_file, check_output_file, plain, text
from mmquant.experiments.base import write_json

__all__ = ["audit_cmd", "calibrate_cmd", "parse_specs", "quantize_model_cmd"]


def parse_specs(values: list[str] | None) -> list[str] | None:
    """Spec strings from repeated ``--quantizers`` values, each holding specs separated by ``;``
    or white space (spec strings themselves contain commas: ``int:bits=4,group=32``)."""
    if not values:
        return None
    out = [s for v in values for s in v.replace(";", " ").split()]
    if not out:
        raise ValueError("--quantizers is empty")
    return out


def _progress(total: int) -> Progress:
    """A progress bar with ETA on stderr, advancing by parameters (nothing outside a terminal)."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _runner(workers: int | None, scheduler: str | None):
    from mmquant.checkpoints.runner import Runner

    return Runner(workers=workers, scheduler=scheduler)


def _fmt(v: float, spec: str = ".4f") -> str:
    return "-" if not isinstance(v, float) or math.isnan(v) else format(v, spec)


def _summary_table(res, title: str) -> Table:
    t = Table(title=text(title))
    cols = ["quantizer", "bits/param", "rel. MSE", "SQNR dB", "gap dB", "gap bits"]
    if res.calibrated:
        cols += ["weighted err", "WF gap bits"]
    for c in cols:
        t.add_column(c, justify="left" if c == "quantizer" else "right")
    for s in sorted(res.summary(), key=lambda s: s.get("bits_per_param", math.inf)):
        if "bits_per_param" not in s:
            t.add_row(text(s["spec"]), *(["failed"] + ["-"] * (len(cols) - 2)))
            continue
        row = [
            text(s["spec"] + (f" ({s['failed']} failed)" if s["failed"] else "")),
            f"{s['bits_per_param']:.3f}",
            f"{s['relative_mse']:.3e}",
            _fmt(-10 * math.log10(s["relative_mse"]) if s["relative_mse"] > 0 else math.inf, ".2f"),
            _fmt(s["gap_db"], ".2f"),
            _fmt(s["gap_bits"], ".3f"),
        ]
        if res.calibrated:
            row += [f"{s['weighted_error']:.3e}", _fmt(s["wf_gap_bits"], ".3f")]
        t.add_row(*row)
    return t


def _rows_table(res) -> Table:
    t = Table(title="per tensor")
    cols = ["tensor", "quantizer", "bits/entry", "rel. MSE", "SQNR dB", "gap dB", "gap bits"]
    if res.calibrated:
        cols += ["weighted err", "WF gap dB", "WF gap bits"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("tensor", "quantizer") else "right")
    for r in res.rows:
        if r.failed:
            t.add_row(text(r.tensor), text(r.spec), text(f"failed: {r.failed}"[:60]))
            continue
        row = [
            text(r.tensor),
            text(r.spec),
            f"{r.bits_per_entry:.3f}",
            f"{r.relative_mse:.3e}",
            _fmt(r.sqnr_db, ".2f"),
            _fmt(r.gap_db, ".2f"),
            _fmt(r.gap_bits, ".3f"),
        ]
        if res.calibrated:
            row += [f"{r.weighted_error:.3e}", _fmt(r.wf_gap_db, ".2f"), _fmt(r.wf_gap_bits, ".3f")]
        t.add_row(*row)
    return t


def _write_csv(path: Path, res) -> None:
    rows = [r.to_json() for r in res.rows]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "shape": "x".join(map(str, r["shape"]))})


@app.command("audit")
def audit_cmd(
    path: Path = typer.Argument(
        ..., help=".safetensors file, HF folder (shards + index), .npy/.npz."
    ),
    quantizers: list[str] = typer.Option(
        None, "--quantizers", "-q", help="Candidate specs, separated by ';' or spaces (repeatable)."
    ),
    include: list[str] = typer.Option(None, help="Also audit tensors matching this glob."),
    exclude: list[str] = typer.Option(None, help="Skip tensors matching this glob."),
    calib: Path = typer.Option(None, help="Calibration file (Σ_X per weight tensor)."),
    budget: float = typer.Option(None, help="Allocate bits: average bits/parameter to stay under."),
    plan: Path = typer.Option(None, help="With --budget: write the allocation as a plan (.json)."),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="Print every tensor × quantizer."),
    json_path: Path = typer.Option(None, "--json", help="Write every measurement as JSON."),
    csv_path: Path = typer.Option(None, "--csv", help="Write every measurement as CSV."),
    heatmap: Path = typer.Option(None, help="PNG heat map: tensor × quantizer, gap in dB."),
    workers: int = typer.Option(None, min=1, help="Run on a local Dask cluster of N workers."),
    scheduler: str = typer.Option(None, help="Run on the Dask cluster at this address."),
) -> None:
    """Every selected tensor × every candidate quantizer: rate, error, gap to the limits."""
    from mmquant.checkpoints import DEFAULT_CANDIDATES, allocate, audit, open_checkpoint
    from mmquant.checkpoints.audit import plot_heatmap
    from mmquant.checkpoints.reader import select_tensors
    from mmquant.core import get

    outs = [(json_path, "--json", (".json",)), (csv_path, "--csv", (".csv",))]
    outs += [(heatmap, "--heatmap", (".png",)), (plan, "--plan", (".json",))]
    for p, what, suffixes in outs:
        if p is not None:
            check_output_file(p, what, suffixes, inputs=[path, calib])
    if plan is not None and budget is None:
        raise ValueError("--plan needs --budget")
    if budget is not None and not (0 < budget <= 64 and math.isfinite(budget)):
        raise ValueError(f"--budget must be in (0, 64] bits per parameter, got {budget}")
    if calib is not None:
        check_input_file(calib, "--calib", (".safetensors",))
    specs = parse_specs(quantizers) or list(DEFAULT_CANDIDATES)
    specs = [get(s).spec for s in specs]  # unknown specs fail before any work
    runner = _runner(workers, scheduler)
    ck = open_checkpoint(path)
    names = select_tensors(ck, include, exclude)
    sizes = [ck.tensors[n].size for n in names]
    console = make_console()
    with _progress(sum(sizes)) as prog:
        task = prog.add_task(f"auditing ({runner.describe()})", total=sum(sizes))

        def done(i: int, name: str) -> None:
            prog.update(task, advance=sizes[i], description=plain(name)[-40:])

        res = audit(path, names, specs, calib=calib, runner=runner, progress=done)
    n_params = sum(sizes)
    if per_tensor:
        console.print(_rows_table(res))
    console.print(
        text(
            f"{path.name}: {len(names)} tensors, {n_params:,} parameters × {len(specs)} "
            f"quantizers ({len(res.passthrough)} other tensors passed through)"
        )
    )
    console.print(_summary_table(res, "parameter-weighted means over the tensors"))
    record = res.to_json()
    if budget is not None:
        alloc = allocate(res, budget)
        record["allocation"] = alloc.to_json()
        _print_allocation(console, alloc, res)
        if plan is not None:
            from mmquant.covariances import Plan, save_plan

            save_plan(plan, Plan(specs=alloc.specs, budget=budget))
            console.print(text(f"wrote {plan}"))
    if json_path is not None:
        write_json(json_path, record)
        console.print(text(f"wrote {json_path}"))
    if csv_path is not None:
        _write_csv(csv_path, res)
        console.print(text(f"wrote {csv_path}"))
    if heatmap is not None:
        plot_heatmap(res, heatmap)
        console.print(text(f"wrote {heatmap}"))


def _print_allocation(console: Console, alloc, res) -> None:
    what = "Σ_X-weighted error" if alloc.weighted else "relative MSE"
    counts: dict[str, list[str]] = {}
    for t, s in alloc.specs.items():
        counts.setdefault(s, []).append(t)
    t = Table(title=text(f"bit allocation at ≤ {alloc.budget:g} bits/parameter"))
    for c in ("quantizer", "tensors", "parameters"):
        t.add_column(c, justify="left" if c == "quantizer" else "right")
    params = {r.tensor: r.params for r in res.rows}
    for s, ts in sorted(counts.items(), key=lambda kv: -sum(params[x] for x in kv[1])):
        t.add_row(text(s), str(len(ts)), f"{sum(params[x] for x in ts):,}")
    console.print(t)
    proof = "optimal" if alloc.exact else f"not proven optimal (bound {alloc.lower_bound:.4e})"
    console.print(
        text(
            f"plan: {alloc.bits_per_param:.4f} bits/parameter, {what} {alloc.error:.4e} "
            f"({proof}; Lagrangian bound {alloc.lower_bound:.4e})"
        )
    )
    if alloc.best_single:
        console.print(
            text(
                f"best single quantizer within the budget: {alloc.best_single} at "
                f"{alloc.best_single_bits:.4f} bits/parameter, {what} {alloc.best_single_error:.4e}"
                f"; the plan removes {100 * alloc.saved:.1f}% of its error ({alloc.saved_db:.2f} dB)"
            )
        )
    else:
        console.print(text("no single candidate fits the budget on every tensor"))


@app.command("quantize-model")
def quantize_model_cmd(
    path: Path = typer.Argument(
        ..., help=".safetensors file, HF folder (shards + index), .npy/.npz."
    ),
    out: Path = typer.Option(..., "--out", help="New (or empty) output folder."),
    spec: str = typer.Option(None, "--spec", help="One quantizer for every selected tensor."),
    plan: Path = typer.Option(None, "--plan", help="A plan file (mmquant audit --budget --plan)."),
    include: list[str] = typer.Option(
        None, help="With --spec: also quantize tensors matching this."
    ),
    exclude: list[str] = typer.Option(None, help="With --spec: skip tensors matching this glob."),
    calib: Path = typer.Option(None, help="Calibration file: Σ_X for GPTQ / WaterSIC."),
    dequantized: bool = typer.Option(
        False, "--dequantized", help="Also write the decoded checkpoint as safetensors."
    ),
    workers: int = typer.Option(None, min=1, help="Run on a local Dask cluster of N workers."),
    scheduler: str = typer.Option(None, help="Run on the Dask cluster at this address."),
) -> None:
    """Quantize a checkpoint: .mmq per shard, other tensors bit for bit, config and tokenizer."""
    from mmquant.checkpoints import open_checkpoint, quantize_checkpoint, select_tensors
    from mmquant.covariances import load_plan

    if (spec is None) == (plan is None):
        raise ValueError("give exactly one of --spec and --plan")
    if plan is not None and (include or exclude):
        raise ValueError("--include / --exclude apply to --spec; a plan names its tensors")
    if calib is not None:
        check_input_file(calib, "--calib", (".safetensors",))
    ck = open_checkpoint(path)
    if plan is not None:
        specs = load_plan(plan).specs
        if not specs:
            raise ValueError(f"plan {plan} names no tensor")
    else:
        specs = dict.fromkeys(select_tensors(ck, include, exclude), spec)
    for name in specs:
        ck.info(name)  # a plan naming a tensor the checkpoint lacks fails here
    runner = _runner(workers, scheduler)
    sizes = {n: ck.tensors[n].size for n in specs}
    with _progress(sum(sizes.values())) as prog:
        task = prog.add_task(f"quantizing ({runner.describe()})", total=sum(sizes.values()))

        def done(i: int, name: str) -> None:
            prog.update(task, advance=sizes[name], description=plain(name)[-40:])

        res = quantize_checkpoint(
            path, out, specs, calib=calib, dequantized=dequantized, runner=runner, progress=done
        )
    console = make_console()
    t = Table(title=text(f"{path.name} → {out}"))
    for c in ("file", "bytes"):
        t.add_column(c, justify="left" if c == "file" else "right")
    for f, size in res.files.items():
        t.add_row(text(f), f"{size:,}")
    console.print(t)
    console.print(
        text(
            f"{len(res.quantized)} tensors quantized at {res.bits_per_param:.4f} bits/parameter, "
            f"{len(res.passthrough)} passed through unchanged"
        )
    )


@app.command("calibrate")
def calibrate_cmd(
    out: Path = typer.Argument(..., help="Output calibration file (.safetensors)."),
    model: str = typer.Option("minilm", help="Bundled model (only 'minilm')."),
    sentences: int = typer.Option(64, min=1, max=4096, help="Calibration sentences."),
) -> None:
    """Write Σ_X of every linear layer of the bundled model (for mmquant audit --calib)."""
    from mmquant.models.capture import save_calibration
    from mmquant.validation import check_choice

    check_choice(model, "model", ("minilm",))
    check_output_file(out, "output", (".safetensors",))
    with Console(stderr=True).status("capturing the layer inputs ..."):
        save_calibration(out, sentences)
    make_console().print(text(f"wrote {out} (Σ_X of every linear layer, {sentences} sentences)"))
