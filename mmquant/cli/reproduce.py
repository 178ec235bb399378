"""``mmquant reproduce NAME``: run one of the papers' experiments (table + JSON + PNG)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mmquant.cli import app, make_console
from mmquant.cli.checks import plain, text
from mmquant.experiments.base import ExperimentResult, experiments, run_experiment

__all__ = ["reproduce_cmd", "result_table"]


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def result_table(res: ExperimentResult) -> Table:
    """A rich table of an experiment's rows."""
    t = Table(title=f"{res.name}: {res.description}")
    for c in res.columns:
        t.add_column(str(c), justify="right")
    for row in res.rows:
        t.add_row(*[_fmt(v) for v in row])
    return t


@app.command("reproduce")
def reproduce_cmd(
    name: str = typer.Argument(None, help="Experiment name; omit to list them."),
    out: Path = typer.Option(Path("."), help="Folder for NAME.json and NAME.png."),
) -> None:
    """Run one of the papers' experiments: print its table, write NAME.json and NAME.png."""
    console = make_console()
    names = experiments()
    if name is None:
        t = Table(title="experiments")
        t.add_column("name", style="cyan")
        t.add_column("description")
        for k, v in names.items():
            t.add_row(k, v)
        console.print(t)
        return
    if name not in names:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(names) or '(none)'}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {plain(out)!r} is a file, expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    with console.status(f"running {name} ..."):
        res = run_experiment(name)
    console.print(result_table(res))
    res.write_json(out / f"{name}.json")
    console.print(text(f"wrote {out / f'{name}.json'}"))
    if res.plot is not None:
        res.plot(out / f"{name}.png")
        console.print(text(f"wrote {out / f'{name}.png'}"))
