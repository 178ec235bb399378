"""Input validation at the public boundary, with errors that name the problem.

Conventions (documented once, used everywhere):

* floating inputs keep their precision: float32 and float64 stay as they are, float16 and
  bfloat16-like ml_dtypes are widened to float32;
* integer inputs are converted to float64 (exact for |x| < 2**53);
* bool, complex, object and string arrays are rejected with a ``TypeError``;
* NaN/Inf and empty arrays are rejected with a ``ValueError``;
* torch tensors (or anything with ``.detach().cpu().numpy()``) are accepted without importing torch;
  an array computed from one goes back as a tensor of its dtype and device (:func:`restore_like`,
  which looks torch up in ``sys.modules`` and never imports it).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = [
    "as_real_array",
    "as_matrix",
    "restore_like",
    "check_int",
    "check_float",
    "check_choice",
]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):  # torch.Tensor
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        return np.asarray(t.numpy())
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TypeError(
            f"cannot convert input of type {type(x).__name__} to an array: {exc}"
        ) from None


def restore_like(out: np.ndarray, like: Any) -> Any:
    """``out`` as a torch tensor with the dtype and device of ``like`` if ``like`` is one.

    The one place where results go back to torch: torch is looked up in ``sys.modules`` (a
    tensor exists only if torch was imported), never imported here. Other inputs give ``out``.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(like, torch.Tensor):
        return out
    t = torch.from_numpy(np.ascontiguousarray(out))
    dtype = like.dtype if like.dtype.is_floating_point else t.dtype
    return t.to(device=like.device, dtype=dtype)


def as_real_array(
    x: Any, *, name: str = "x", min_ndim: int = 1, ndim: int | None = None
) -> np.ndarray:
    """Validate ``x`` and return it as a finite float32 or float64 numpy array.

    Parameters
    ----------
    x : array_like
        The input (numpy array, nested list, torch tensor ...).
    name : str
        Name used in error messages ("A", "weights" ...).
    min_ndim : int
        Smallest number of dimensions accepted.
    ndim : int, optional
        Exact number of dimensions required (overrides ``min_ndim``).

    Raises
    ------
    TypeError
        Unsupported dtype (bool, complex, object, string).
    ValueError
        Wrong number of dimensions, empty array, NaN or Inf entries.
    """
    arr = _to_numpy(x)
    kind = arr.dtype.kind
    if kind == "f" or (kind == "V" and arr.dtype.itemsize <= 2):
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32)  # float16, bfloat16, float8 ... widen
    elif kind in "iu":
        arr = arr.astype(np.float64)
    else:
        raise TypeError(
            f"{name} has unsupported dtype {arr.dtype}; expected a real floating or integer array"
        )
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {arr.ndim}-D with shape {arr.shape}")
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf)")
    return arr


def as_matrix(x: Any, *, name: str = "x") -> np.ndarray:
    """Validate a 2-D real matrix (see :func:`as_real_array`)."""
    return as_real_array(x, name=name, ndim=2)


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Check that ``value`` is an integer in ``[lo, hi]`` and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {rng}, got {v}")
    return v


def check_float(
    value: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Check that ``value`` is a finite real number in the given range and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    bad = not np.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(
            f"{name} must be in {left}{lo if lo is not None else '-inf'}, "
            f"{hi if hi is not None else 'inf'}{right}, got {value!r}"
        )
    return v


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """Check that ``value`` is one of ``choices`` and return it."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value
