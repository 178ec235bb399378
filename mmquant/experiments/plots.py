"""The figures of the CLI and the experiments: one matplotlib set-up, the Γ(R) figure, family scatter.

Every figure is written as a PNG through :func:`figure`, which selects the non-interactive ``Agg``
backend (no display needed), lays the axes out and closes the figure; matplotlib is imported only
when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.theory.matmul_rd import GAMMA_R_STAR, R_STAR, gamma, shannon_distortion

__all__ = ["figure", "plot_gamma", "scatter_families"]

MARKERS = "os^vD<>pPX*hH8d"


@contextmanager
def figure(
    path: str | Path,
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float] = (8.0, 5.5),
    dpi: int = 120,
    **subplots: Any,
) -> Iterator[tuple[Any, Any]]:
    """``with figure(path) as (fig, ax): ...`` draws on new axes and writes them to ``path`` (PNG).

    Parameters
    ----------
    path : str or Path
        PNG file to write when the block ends without an exception.
    nrows, ncols : int
        Grid of axes (``ax`` is a single Axes for 1×1, else as ``plt.subplots`` returns it).
    figsize : tuple of float
        Figure size in inches.
    dpi : int
        Resolution of the PNG.
    **subplots
        Passed to ``matplotlib.pyplot.subplots`` (``sharex``, ``squeeze`` ...).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(nrows, ncols, figsize=figsize, **subplots)
    try:
        yield fig, ax
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def scatter_families(ax: Any, points: Sequence[Mapping[str, Any]]) -> None:
    """Measured (rate, product error) points, one marker per quantizer family.

    Parameters
    ----------
    ax : matplotlib Axes
        Axes with a logarithmic y axis.
    points : sequence of mapping
        Rows with ``family``, ``bits_per_entry`` (bits/entry) and ``error`` (normalised product
        error), as :class:`mmquant.experiments.compare.CompareRow` writes them.
    """
    families = sorted({str(p["family"]) for p in points})
    for i, fam in enumerate(families):
        pts = [p for p in points if p["family"] == fam]
        ax.semilogy(
            [p["bits_per_entry"] for p in pts],
            [p["error"] for p in pts],
            MARKERS[i % len(MARKERS)],
            ls="none",
            label=fam,
        )


def plot_gamma(
    path: str | Path,
    points: Sequence[Mapping[str, Any]] | None = None,
    *,
    rmax: float = 8.0,
    title: str = "",
    bounds: bool = True,
) -> None:
    """Γ(R) with the measured point of every quantizer, as a PNG.

    Parameters
    ----------
    path : str or Path
        PNG to write.
    points : sequence of mapping, optional
        Measured rows (see :func:`scatter_families`).
    rmax : float
        Largest rate on the axis, bits per entry.
    title : str
        Figure title.
    bounds : bool
        Also draw R*, the low-rate curve 2·2^{−2R} − 2^{−4R} and D(R) = 2^{−2R}.
    """
    r = np.linspace(0.0, rmax, 800)
    with figure(path) as (_, ax):
        ax.semilogy(r, gamma(r), "k-", lw=2, label="Γ(R): matmul rate–distortion (iid Gaussian)")
        if bounds:
            hi = np.linspace(0.05, R_STAR, 100)
            ax.semilogy(
                hi, 2 * 2.0 ** (-2 * hi) - 2.0 ** (-4 * hi), "k:", lw=1, label="2·2^{−2R} − 2^{−4R}"
            )
            ax.semilogy(
                r, shannon_distortion(r), "--", color="gray", label="D(R) = 2^{−2R} (one matrix)"
            )
            ax.axvline(R_STAR, color="tab:red", lw=0.8, ls="--")
            ax.annotate(
                f"R* = {R_STAR:.4f}",
                (R_STAR, GAMMA_R_STAR),
                textcoords="offset points",
                xytext=(8, 8),
            )
        if points:
            scatter_families(ax, points)
        ax.set_xlim(0, rmax)
        ax.set_xlabel("measured rate R (bits/entry)")
        ax.set_ylabel("normalised product error  ‖AᵀB − ÂᵀB̂‖²·n / (‖A‖²‖B‖²)")
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
