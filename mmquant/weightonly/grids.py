"""Scalar grids for RTN and GPTQ: a plain uniform step (entropy coded) and absmax INT (fixed width).

``"uniform"``
    ``z = round(t/Δ)``, ``ŵ = Δ·z`` with one step Δ for the whole matrix (one float32), integers
    entropy coded per column. Δ is searched so that the measured rate hits the target.
``"int"``
    Absmax INT with ``b`` bits and groups of ``g`` inputs per row: ``s_{r,k} = amax_{r,k}/qmax``
    (``qmax = 2^{b−1} − 1``) stored as float16 relative to one float32 unit, computed once from the
    original weights (GPTQ's *static groups*); ``z = clip(round(t/s), −qmax, qmax)``, packed at
    ``b`` bits: ``b + 16/g`` bits per weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmquant.validation import check_choice, check_int

__all__ = ["Grid", "make_grid", "GRIDS"]

GRIDS = ("uniform", "int")


@dataclass(frozen=True, eq=False)
class Grid:
    """A prepared scalar grid for a working-basis matrix ``(a, m)``.

    Attributes
    ----------
    kind : str
        ``"uniform"`` or ``"int"``.
    unit : float
        float32 unit (Δ for ``"uniform"``).
    row_scale : numpy.ndarray or None
        ``(a, G)`` float16 scales relative to ``unit`` (``"int"``).
    group : int
        Inputs per scale group.
    bits : int or None
        Fixed width of the codes (``"int"``).
    """

    kind: str
    unit: float
    row_scale: np.ndarray | None
    group: int
    bits: int | None

    @property
    def qmax(self) -> int:
        return 2 ** (int(self.bits) - 1) - 1 if self.bits else 0

    def scales(self, j: int) -> np.ndarray | float:
        """Step of column ``j`` (per row for ``"int"``)."""
        if self.row_scale is None:
            return self.unit
        return self.unit * self.row_scale[:, j // self.group].astype(np.float64)

    def quantize(self, j: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes and reconstruction of W-domain column target ``t`` (length ``a``)."""
        s = self.scales(j)
        if self.kind == "uniform":
            z = np.rint(t / s)
        else:
            safe = np.where(s > 0, s, 1.0)
            z = np.where(s > 0, np.clip(np.rint(t / safe), -self.qmax, self.qmax), 0.0)
        return z.astype(np.int64), s * z


def make_grid(
    kind: str,
    wk: np.ndarray,
    *,
    step: float | None = None,
    bits: int = 4,
    group: int | None = None,
) -> Grid:
    """Prepare a grid for the working weights ``wk`` (``"int"``: scales from ``wk``)."""
    check_choice(kind, "grid", GRIDS)
    a, m = wk.shape
    if kind == "uniform":
        if step is None or not step > 0:
            raise ValueError(f"the uniform grid needs a step > 0, got {step!r}")
        return Grid("uniform", float(np.float32(step)), None, m, None)
    b = check_int(bits, "bits", 2, 16)
    g = m if group is None else check_int(group, "group", 1)
    qmax = 2 ** (b - 1) - 1
    n_groups = -(-m // g)
    pad = np.zeros((a, n_groups * g))
    pad[:, :m] = np.abs(wk)
    amax = pad.reshape(a, n_groups, g).max(axis=2)
    s = amax / qmax
    pos = s[s > 0]
    unit = float(2.0 ** round(math.log2(float(np.median(pos))))) if pos.size else 1.0
    return Grid("int", unit, (s / unit).astype(np.float16), g, b)
