"""Audit of a checkpoint: every selected tensor × every candidate quantizer, against the limits.

For a tensor ``W`` (``a × n``, quantized along ``n``) and a quantizer giving ``Ŵ`` with ``E = W − Ŵ``:

* ``bits_per_entry`` — measured from the stored bytes (codes + side information);
* ``relative_mse`` ``ε = ‖E‖²_F / ‖W‖²_F`` and ``sqnr_db = −10·log10 ε``;
* the gap to the Gaussian limit ``D(R) = 2^{−2R}`` of the **row-normalised** weights: with
  ``ε_row = mean_r ‖e_r‖²/‖w_r‖²`` (each row scaled to unit power, as iid N(0, 1) rows would be),
  ``gap_db = 10·log10(ε_row / 2^{−2R})`` and ``gap_bits = R + ½·log2 ε_row`` (the rate loss of
  :func:`mmquant.theory.highrate.rate_loss`: bits spent beyond an optimal Gaussian code);
* with a calibration covariance ``Σ_X`` of the layer's inputs: the weighted error
  ``ε_Σ = tr(EΣ_XEᵀ) / tr(WΣ_XWᵀ)`` (the relative error of the layer's output ``Wx``), and the
  gap to the waterfilling limit of iid ``N(0, σ²)`` weights (``σ² = mean W²``) at the measured
  WMSE ``tr(EΣ_XEᵀ)/(a·n)``: ``wf_gap_bits = R − R_wf(WMSE)`` and
  ``wf_gap_db = 10·log10(WMSE / D_wf(R))`` (:mod:`mmquant.theory.highrate`).

The work is split into one task per tensor (:func:`audit_tensor`, which opens the checkpoint and
reads its tensor itself), run serially or on Dask by :func:`mmquant.checkpoints.runner.run_tasks`.
A quantizer that cannot encode a tensor (a row length it does not support ...) gives a row with
``failed`` set to the reason instead of stopping the audit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.checkpoints.reader import Checkpoint, open_checkpoint, read_covariance
from mmquant.checkpoints.runner import Runner, run_tasks
from mmquant.core import get

__all__ = [
    "DEFAULT_CANDIDATES",
    "AuditRow",
    "AuditResult",
    "audit",
    "audit_tensor",
    "as_matrix_of",
    "plot_heatmap",
]

#: Candidates of ``mmquant audit`` by default: the hardware formats, and the best lattice and
#: scalar codes of ``mmquant compare`` at 3, 4 and 5 bits (so that a bit allocation has choices).
DEFAULT_CANDIDATES = (
    "int:bits=4",
    "int:bits=8",
    "nf4",
    "mxfp4",
    "nvfp4",
    "mxfp6",
    "mxfp8",
    "mxint8",
    "e8",
    "e8ec:rate=3.0",
    "e8ec",
    "e8ec:rate=5.0",
    "lloydmax:bits=3",
    "lloydmax",
    "lloydmax:bits=5",
)
_LOG10_4 = 20.0 * math.log10(2.0)  # dB per bit of a 2^{-2R} curve


@dataclass(frozen=True)
class AuditRow:
    """One tensor quantized by one candidate (see the module docstring for the formulas).

    Attributes
    ----------
    tensor, spec : str
    shape : tuple of int
    params : int
        Entries of the tensor.
    nbytes : int
        Stored bytes of the encoding (``bits_per_entry = 8·nbytes/params``).
    bits_per_entry, relative_mse, sqnr_db, gap_db, gap_bits : float
    weighted_error, wf_gap_db, wf_gap_bits : float
        NaN without a calibration covariance.
    failed : str
        Empty, or why the quantizer could not encode the tensor (the numbers are then NaN).
    """

    tensor: str
    spec: str
    shape: tuple[int, ...]
    params: int
    nbytes: int
    bits_per_entry: float
    relative_mse: float
    sqnr_db: float
    gap_db: float
    gap_bits: float
    weighted_error: float = math.nan
    wf_gap_db: float = math.nan
    wf_gap_bits: float = math.nan
    failed: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form."""
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    """The audit of a checkpoint.

    Attributes
    ----------
    path : str
    specs : tuple of str
        Candidates, in the order given.
    tensors : tuple of str
        Audited tensors, in checkpoint order.
    passthrough : tuple of str
        The other tensors (left unchanged by an export).
    rows : tuple of AuditRow
        Tensor-major: for each tensor, one row per spec.
    calibrated : bool
        Whether the weighted errors were measured (a calibration file was given).
    """

    path: str
    specs: tuple[str, ...]
    tensors: tuple[str, ...]
    passthrough: tuple[str, ...]
    rows: tuple[AuditRow, ...]
    calibrated: bool
    runner: str = "serial"
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """Per spec: total bits per parameter and parameter-weighted errors over all tensors."""
        out = []
        for spec in self.specs:
            rows = [r for r in self.rows if r.spec == spec]
            ok = [r for r in rows if not r.failed]
            n = sum(r.params for r in ok)
            rec: dict[str, Any] = {"spec": spec, "tensors": len(ok), "failed": len(rows) - len(ok)}
            if n:
                rec["bits_per_param"] = sum(8 * r.nbytes for r in ok) / n
                rec["relative_mse"] = sum(r.params * r.relative_mse for r in ok) / n
                rec["gap_db"] = sum(r.params * r.gap_db for r in ok) / n
                rec["gap_bits"] = sum(r.params * r.gap_bits for r in ok) / n
                if self.calibrated:
                    rec["weighted_error"] = sum(r.params * r.weighted_error for r in ok) / n
                    rec["wf_gap_bits"] = sum(r.params * r.wf_gap_bits for r in ok) / n
            out.append(rec)
        return out

    def to_json(self) -> dict[str, Any]:
        """``{name, description, path, ..., results: [rows]}``."""
        return {
            "name": "audit",
            "description": "every selected tensor × every candidate quantizer, against the limits",
            "path": self.path,
            "specs": list(self.specs),
            "tensors": list(self.tensors),
            "passthrough": list(self.passthrough),
            "calibrated": self.calibrated,
            "runner": self.runner,
            "summary": self.summary(),
            "results": [r.to_json() for r in self.rows],
        }


@lru_cache(maxsize=8)
def _open(path: str, mtime_ns: int) -> Checkpoint:
    return open_checkpoint(path)


def open_cached(path: str) -> Checkpoint:
    """:func:`open_checkpoint`, cached per process on (path, modification time)."""
    p = Path(path)
    return _open(str(p), p.stat().st_mtime_ns)


def as_matrix_of(arr: np.ndarray) -> np.ndarray:
    """A tensor as the float matrix a quantizer sees: ``(prod(shape[:-1]), shape[-1])``.

    float64 stays float64; every other float dtype (float16, bfloat16, float8) becomes float32.
    """
    dt = np.float64 if arr.dtype == np.float64 else np.float32
    m = np.asarray(arr, dtype=dt)
    return m.reshape(-1, m.shape[-1]) if m.ndim != 2 else m


#: Rows per block of the error sums (float64 temporaries stay small next to the tensor).
_BLOCK_ROWS = 256


def _error_sums(
    w: np.ndarray, w_hat: np.ndarray, sigma: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-row ``‖w_r‖²``, ``‖e_r‖²`` and, with Σ, ``tr(EΣEᵀ)``, ``tr(WΣWᵀ)`` (float64, by blocks)."""
    pw = np.empty(w.shape[0])
    pe = np.empty(w.shape[0])
    num = den = 0.0
    for lo in range(0, w.shape[0], _BLOCK_ROWS):
        hi = min(lo + _BLOCK_ROWS, w.shape[0])
        wb = np.asarray(w[lo:hi], np.float64)
        eb = wb - np.asarray(w_hat[lo:hi], np.float64)
        pw[lo:hi] = np.einsum("ij,ij->i", wb, wb)
        pe[lo:hi] = np.einsum("ij,ij->i", eb, eb)
        if sigma is not None:
            num += float(np.einsum("ij,ij->", eb @ sigma, eb))
            den += float(np.einsum("ij,ij->", wb @ sigma, wb))
    return pw, pe, num, den


def _row_normalised_error(pw: np.ndarray, pe: np.ndarray) -> float:
    live = pw > 0
    if not live.any():
        return math.nan
    if np.any(pe[~live] > 0):
        return math.inf
    return float(np.mean(pe[live] / pw[live]))


def _gaussian_gaps(eps_row: float, rate: float) -> tuple[float, float]:
    if not math.isfinite(eps_row) or eps_row <= 0:
        return (-math.inf, -math.inf) if eps_row == 0 else (math.inf, math.inf)
    return 10.0 * math.log10(eps_row) + _LOG10_4 * rate, rate + 0.5 * math.log2(eps_row)


def _measure(
    tensor: str,
    spec: str,
    w: np.ndarray,
    shape: tuple[int, ...],
    sigma: np.ndarray | None,
    lam: np.ndarray | None,
) -> AuditRow:
    from mmquant.theory.highrate import waterfill_distortion, waterfill_rate
    from mmquant.weightonly.quantizers import WeightOnlyQuantizer

    q = get(spec)
    kw = {"sigma": sigma} if sigma is not None and isinstance(q, WeightOnlyQuantizer) else {}
    try:
        enc = q.encode(w, **kw)
        w_hat = q.decode(enc)
    except (ValueError, TypeError) as exc:
        nan = math.nan
        return AuditRow(tensor, q.spec, shape, w.size, 0, nan, nan, nan, nan, nan, failed=str(exc))
    pw, pe, num, den = _error_sums(w, w_hat, sigma)
    del w_hat
    power, err = math.fsum(pw), math.fsum(pe)
    eps = err / power if power > 0 else (0.0 if err == 0 else math.inf)
    sq = math.inf if eps == 0 else -10.0 * math.log10(eps)
    rate = enc.bits_per_entry
    gdb, gbits = _gaussian_gaps(_row_normalised_error(pw, pe), rate)
    row = AuditRow(tensor, q.spec, shape, w.size, enc.nbytes, rate, eps, sq, gdb, gbits)
    if sigma is None or lam is None:
        return row
    wmse = max(num, 0.0) / w.size
    s2 = power / w.size
    if wmse <= 0 or s2 <= 0 or not np.any(lam > 0):
        wf_db = wf_bits = -math.inf if wmse <= 0 else math.nan
    else:
        wf_bits = rate - waterfill_rate(lam, wmse, sigma2=s2)
        d_lim = waterfill_distortion(lam, rate, sigma2=s2)
        wf_db = 10.0 * math.log10(wmse / d_lim) if d_lim > 0 else math.inf
    return AuditRow(
        tensor,
        q.spec,
        shape,
        w.size,
        enc.nbytes,
        rate,
        eps,
        sq,
        gdb,
        gbits,
        weighted_error=num / den if den > 0 else math.nan,
        wf_gap_db=wf_db,
        wf_gap_bits=wf_bits,
    )


def audit_tensor(
    path: str, tensor: str, specs: Sequence[str], calib: str | None = None
) -> list[AuditRow]:
    """Audit one tensor of the checkpoint at ``path`` with every spec (one task of :func:`audit`).

    The checkpoint is opened and the tensor read here (a Dask worker reads it from the path
    itself); Σ_X is read from the calibration file ``calib`` if given.

    Returns
    -------
    list of AuditRow
        One per spec, in order.
    """
    ck = open_cached(path)
    arr = ck.read(tensor)
    shape = tuple(arr.shape)
    w = as_matrix_of(arr)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"tensor {tensor!r} holds NaN or Inf")
    sigma = lam = None
    if calib is not None:
        if len(shape) != 2:
            raise ValueError(f"tensor {tensor!r} has shape {shape}: Σ_X applies to 2-D weights")
        sigma = read_covariance(calib, tensor, shape[1])
        lam = np.clip(np.linalg.eigvalsh(sigma), 0.0, None)
    return [_measure(tensor, s, w, shape, sigma, lam) for s in specs]


def audit(
    path: str | Path,
    tensors: Sequence[str],
    specs: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    calib: str | Path | None = None,
    runner: Runner | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> AuditResult:
    """Audit ``tensors`` of the checkpoint at ``path`` with every quantizer of ``specs``.

    Parameters
    ----------
    path : str or Path
        Checkpoint (see :func:`mmquant.checkpoints.open_checkpoint`).
    tensors : sequence of str
        Tensors to audit (:func:`mmquant.checkpoints.select_tensors` picks the linear weights).
    specs : sequence of str
        Candidate quantizers (spec strings; checked before any work).
    calib : str or Path, optional
        Calibration file (:func:`mmquant.covariances.save_covariances`) with a Σ_X for every tensor.
    runner : Runner, optional
        Serial (default) or Dask.
    progress : callable, optional
        ``progress(i, tensor)`` after each tensor.

    Returns
    -------
    AuditResult
    """
    ck = open_checkpoint(path)
    specs = tuple(dict.fromkeys(get(s).spec for s in specs))
    if not specs:
        raise ValueError("no candidate quantizers")
    tensors = tuple(tensors)
    if not tensors:
        raise ValueError("no tensors to audit")
    for t in tensors:
        ck.info(t)
    if calib is not None:
        from mmquant.checkpoints.safetensors_file import read_header

        have = read_header(calib).tensors
        missing = [t for t in tensors if t not in have]
        if missing:
            raise ValueError(
                f"calibration file {calib} has no covariance for {len(missing)} tensor(s): "
                f"{', '.join(missing[:3])}"
            )
    tasks = [(str(ck.path), t, specs, None if calib is None else str(calib)) for t in tensors]
    done = None if progress is None else (lambda i, _r: progress(i, tensors[i]))
    results = run_tasks(audit_tensor, tasks, runner, done)
    rows = tuple(r for rs in results for r in rs)
    sel = set(tensors)
    return AuditResult(
        path=str(ck.path),
        specs=specs,
        tensors=tensors,
        passthrough=tuple(n for n in ck.tensors if n not in sel),
        rows=rows,
        calibrated=calib is not None,
        runner=(runner or Runner()).describe(),
    )


def plot_heatmap(result: AuditResult, path: str | Path, *, field_name: str = "gap_db") -> None:
    """PNG heat map: tensors (rows) × quantizers (columns), coloured by ``field_name`` (dB)."""
    from mmquant.experiments.plots import figure

    grid = np.full((len(result.tensors), len(result.specs)), np.nan)
    ti = {t: i for i, t in enumerate(result.tensors)}
    si = {s: j for j, s in enumerate(result.specs)}
    for r in result.rows:
        v = getattr(r, field_name)
        if not r.failed and math.isfinite(v):
            grid[ti[r.tensor], si[r.spec]] = v
    h = max(3.0, 0.22 * len(result.tensors) + 1.5)
    w = max(5.0, 0.55 * len(result.specs) + 3.5)
    with figure(path, figsize=(w, min(h, 60.0))) as (fig, ax):
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(result.specs)), result.specs, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(result.tensors)), result.tensors, fontsize=6)
        fig.colorbar(im, ax=ax, label=f"{field_name} (dB)")
        ax.set_title(f"{Path(result.path).name}: gap to the limit (dB)", fontsize=9)
