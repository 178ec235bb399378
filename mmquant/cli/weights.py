"""``mmquant weights``: weight-only quantization of the bundled model, layer by layer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mmquant.cli import app
from mmquant.cli.checks import check_output_file, text
from mmquant.experiments.base import write_json

__all__ = ["weights_cmd"]


@app.command("weights")
def weights_cmd(
    model: str = typer.Option("minilm", help="Bundled model (only 'minilm')."),
    method: str = typer.Option(
        "watersic", help="rtn | gptq | gptq-rot | watersic | e8sic | tcqsic"
    ),
    rate: float = typer.Option(4.0, help="Target bits per weight (bitstream + side information)."),
    sentences: int = typer.Option(64, help="Calibration sentences for Σ_X."),
    eval_sentences: int = typer.Option(32, help="Held-out sentences for the embedding cosine."),
    layers: str = typer.Option(None, help="Only layers whose name contains this string."),
    json_path: Path = typer.Option(None, "--json", help="Write the per-layer results here."),
) -> None:
    """Quantize every linear layer with its calibration Σ_X; gap to the waterfilling limit."""
    from mmquant.experiments.weight_only import quantize_minilm
    from mmquant.models.files import short_layer_name
    from mmquant.validation import check_choice
    from mmquant.weightonly import METHODS

    check_choice(model, "model", ("minilm",))
    check_choice(method, "method", METHODS)
    if json_path is not None:
        check_output_file(json_path, "--json", (".json",))
    console = Console()
    with console.status("loading the model and calibrating ...") as status:

        def progress(i: int, total: int, name: str) -> None:
            status.update(f"[{i + 1}/{total}] {method} {name}")

        res = quantize_minilm(
            method,
            rate,
            n_sentences=sentences,
            eval_sentences=eval_sentences,
            layers=layers,
            progress=progress,
        )
    t = Table(title=f"MiniLM weights, {method} at {rate:g} bits/weight")
    for c in (
        "layer",
        "shape",
        "bits/weight",
        "side",
        "entropy",
        "WMSE",
        "rel. WMSE",
        "gap (bits)",
    ):
        t.add_column(c, justify="right")
    for lr in res.layers:
        t.add_row(
            short_layer_name(lr.layer),
            f"{lr.rows}x{lr.cols}",
            f"{lr.bits_per_weight:.4f}",
            f"{lr.side_bits_per_weight:.4f}",
            f"{lr.entropy:.4f}",
            f"{lr.wmse:.3e}",
            f"{lr.relative_wmse:.3e}",
            f"{lr.gap_bits:.3f}",
        )
    console.print(t)
    mean_gap = sum(lr.gap_bits for lr in res.layers) / len(res.layers)
    console.print(
        f"all layers: {res.bits_per_weight:.4f} bits/weight, mean gap {mean_gap:.3f} bit; "
        f"embedding cosine vs unquantized: mean {res.cosine_mean:.5f}, min {res.cosine_min:.5f} "
        f"({eval_sentences} held-out sentences)"
    )
    if json_path is not None:
        write_json(json_path, res.to_json())
        console.print(text(f"wrote {json_path}"))
