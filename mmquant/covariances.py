"""Calibration files: one input covariance Σ_X = E[x xᵀ] per linear layer, and bit-allocation plans.

A *calibration file* is a safetensors file (read without torch) that holds, for every linear layer,
the float64 matrix Σ_X of the layer's inputs (n_in × n_in, symmetric, positive semi-definite) under
the name of the layer's **weight tensor** (``encoder.layer.0.attention.self.query.weight``), so that
a checkpoint's tensor and its covariance share one key. The header metadata says what the file is
(``format = mmquant-calib``, ``version``) and how many tokens each covariance averages
(``tokens``, a JSON object name → count). Writers: :func:`save_covariances` (called by the numpy
MiniLM captures and the torch bridge); readers: ``mmquant audit --calib``, ``mmquant weights``.

A *plan* is a small JSON file naming one quantizer spec per weight tensor, as chosen by a bit
allocation (``mmquant audit --budget``) and read by ``mmquant quantize-model --plan`` and the
torch bridge.

Both readers treat the file as hostile: sizes, dtypes, shapes, symmetry and finiteness are checked
before anything is returned, and every failure is a :class:`ValueError` that names the file, the
tensor and the problem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CALIB_FORMAT",
    "PLAN_FORMAT",
    "CalibrationFile",
    "Plan",
    "save_covariances",
    "load_covariances",
    "save_plan",
    "load_plan",
]

CALIB_FORMAT = "mmquant-calib"
PLAN_FORMAT = "mmquant-plan"
_VERSION = 1
#: Largest layer input width accepted from a file (Σ_X is n × n float64: 2^15 → 8 GiB).
MAX_WIDTH = 1 << 15
#: Largest plan file read (bytes).
MAX_PLAN_BYTES = 64 << 20


@dataclass(frozen=True)
class CalibrationFile:
    """The covariances of a calibration file.

    Attributes
    ----------
    covariances : dict of str to ndarray
        Σ_X per weight-tensor name, float64, n_in × n_in, symmetric.
    tokens : dict of str to int
        Number of input vectors (tokens) averaged into each Σ_X.
    """

    covariances: dict[str, np.ndarray]
    tokens: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.covariances[name]
        except KeyError:
            raise KeyError(
                f"no covariance for tensor {name!r} in the calibration file "
                f"(it has {len(self.covariances)}: {', '.join(sorted(self.covariances)[:5])}…)"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.covariances

    def __len__(self) -> int:
        return len(self.covariances)


def _check_covariance(name: str, s: np.ndarray, where: str) -> np.ndarray:
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(
            f"{where}: covariance {name!r} must be a square n × n matrix, got {s.shape}"
        )
    if s.shape[0] > MAX_WIDTH:
        raise ValueError(f"{where}: covariance {name!r} is {s.shape[0]} wide (at most {MAX_WIDTH})")
    if not np.issubdtype(s.dtype, np.floating):
        raise ValueError(f"{where}: covariance {name!r} has dtype {s.dtype}, expected float64")
    s = np.asarray(s, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{where}: covariance {name!r} holds NaN or Inf")
    scale = max(float(np.abs(s).max()), np.finfo(np.float64).tiny)
    if float(np.abs(s - s.T).max()) > 1e-6 * scale:
        raise ValueError(f"{where}: covariance {name!r} is not symmetric")
    if float(np.diag(s).min()) < -1e-9 * scale:
        raise ValueError(f"{where}: covariance {name!r} has a negative diagonal entry")
    return s


def save_covariances(
    path: str | Path,
    covariances: Mapping[str, np.ndarray],
    tokens: Mapping[str, int] | None = None,
) -> Path:
    """Write a calibration file.

    Parameters
    ----------
    path : str or Path
        Output ``.safetensors`` file.
    covariances : mapping of str to ndarray
        Σ_X = E[x xᵀ] per weight-tensor name (n_in × n_in; stored as float64).
    tokens : mapping of str to int, optional
        Number of input vectors averaged into each Σ_X.

    Returns
    -------
    Path
        The file written.
    """
    from safetensors.numpy import save_file

    if not covariances:
        raise ValueError("no covariances to save")
    where = str(path)
    tensors = {
        str(k): np.ascontiguousarray(_check_covariance(str(k), np.asarray(v), where))
        for k, v in covariances.items()
    }
    counts = {str(k): int(v) for k, v in (tokens or {}).items()}
    unknown = sorted(set(counts) - set(tensors))
    if unknown:
        raise ValueError(f"token counts for tensors without a covariance: {unknown[:5]}")
    if any(c < 0 for c in counts.values()):
        raise ValueError("token counts must be non-negative")
    meta = {"format": CALIB_FORMAT, "version": str(_VERSION), "tokens": json.dumps(counts)}
    out = Path(path)
    save_file(tensors, str(out), metadata=meta)
    return out


def load_covariances(path: str | Path) -> CalibrationFile:
    """Read and check a calibration file written by :func:`save_covariances`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a calibration file, or a covariance that is not a finite symmetric square matrix.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"calibration file {p} not found")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CALIB_FORMAT:
                raise ValueError(
                    f"{p} is not an mmquant calibration file (metadata format="
                    f"{meta.get('format')!r}, expected {CALIB_FORMAT!r})"
                )
            if meta.get("version") != str(_VERSION):
                raise ValueError(f"{p}: calibration file version {meta.get('version')!r} unknown")
            covs = {k: _check_covariance(k, f.get_tensor(k), str(p)) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{p} is not a readable safetensors file: {e}") from None
    try:
        tokens = json.loads(meta.get("tokens", "{}"))
    except json.JSONDecodeError:
        raise ValueError(f"{p}: the token counts in the metadata are not JSON") from None
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in tokens.items()
    ):
        raise ValueError(f"{p}: token counts must map tensor names to non-negative integers")
    if not covs:
        raise ValueError(f"{p} holds no covariances")
    return CalibrationFile(covs, tokens)


@dataclass(frozen=True)
class Plan:
    """One quantizer spec per weight tensor (a bit allocation's result).

    Attributes
    ----------
    specs : dict of str to str
        Spec string per weight-tensor name; tensors not named are left unquantized.
    budget : float or None
        The average bits per parameter the plan was chosen for, if any.
    """

    specs: dict[str, str]
    budget: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": PLAN_FORMAT,
                "version": _VERSION,
                "budget": self.budget,
                "specs": self.specs,
            },
            indent=2,
        )


def save_plan(path: str | Path, plan: Plan) -> Path:
    """Write ``plan`` as JSON (checks every spec string against the registry first)."""
    from .core import get

    for name, spec in plan.specs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"plan tensor names must be non-empty strings, got {name!r}")
        get(spec)
    out = Path(path)
    out.write_text(plan.to_json() + "\n")
    return out


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan file written by :func:`save_plan`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a plan file, or an entry that is not a registered spec string.
    """
    from .core import get

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"plan file {p} not found")
    if p.stat().st_size > MAX_PLAN_BYTES:
        raise ValueError(f"{p}: plan file larger than {MAX_PLAN_BYTES} bytes")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not a JSON plan file: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != PLAN_FORMAT:
        raise ValueError(f"{p} is not an mmquant plan (expected format {PLAN_FORMAT!r})")
    if obj.get("version") != _VERSION:
        raise ValueError(f"{p}: plan version {obj.get('version')!r} unknown")
    specs = obj.get("specs")
    if not isinstance(specs, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in specs.items()
    ):
        raise ValueError(f"{p}: 'specs' must map tensor names to spec strings")
    for name, spec in specs.items():
        try:
            get(spec)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{p}: tensor {name!r}: {e}") from None
    budget = obj.get("budget")
    if budget is not None and (
        isinstance(budget, bool)
        or not isinstance(budget, int | float)
        or not math.isfinite(budget)
        or budget <= 0
    ):
        raise ValueError(f"{p}: budget must be a positive number of bits per parameter")
    return Plan(dict(specs), None if budget is None else float(budget))
