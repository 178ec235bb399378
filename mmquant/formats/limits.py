"""Numbers at the edges of the stored dtypes: what the scalar formats guarantee, and the checks.

Every scalar format decodes to **float32** and stores its scales in a small dtype (float16 or
float32 for ``int``, ``fp``, ``nf4`` and the companders; E8M0 for MX; E4M3 × FP32 for NVFP4). This
module holds the rules that keep every finite input either within the family's error or refused
with a ``ValueError`` that names the problem:

**Large values.** A decoded value must be finite in float32:

* an input whose largest magnitude exceeds the float32 range (3.4e38; only float64 input can) is
  refused -- a float32 result cannot hold it;
* a float32 scale ``s`` whose decoded peak ``fl32(s · peak)`` (``peak`` = the largest element
  value, e.g. ``qmax`` for INT) would round beyond float32 is lowered by one ulp at a time until it
  fits (:func:`fit_float32_peak`): the largest entry then saturates by at most a few float32 ulps,
  instead of decoding as ``inf``. Float16 scales beyond 65504 stay an error (``scale_dtype=float32``).

**Small values.** A scale stored in float16 has only *absolute* precision below the float16 normal
range: the subnormals are multiples of ``2^−24`` (5.96e-8), and a smaller nonzero scale can only be
stored as ``2^−24``. Rows whose scales fall there would decode with much larger errors than the
format's -- as zeros (INT), or far from the input (a compander scaling its codebook by a wrong
``σ``). The check (:func:`check_row_precision`) compares, for every row holding a scale below
:func:`precise_scale_floor` (``2^−18`` = 3.8e-6 for float16, where the stored scale is still within
``2^−7`` relative; ``2^−143`` for float32), the reconstruction with the stored scales to the one with
exact (float64) scales, both rounded to float32 like the decoder's output::

    refuse row r  if  ‖x̂_r − x_r‖ > 2·‖x̂*_r − x_r‖ + 2^−7·‖x_r‖ + 4·2^−149·√n

(``x̂*`` = exact scales). Refused inputs raise ``ValueError`` naming the first such row, its
magnitude, the smallest precise scale and the remedy (``scale_dtype=float32``). Rows with no scale
below the floor are not checked: their stored scales are within ``2^−7`` relative of the exact
ones. Only rows that hold such scales are reconstructed a second time (numpy, in chunks), so the
encoding of ordinary data costs one comparison over the scales; accepted inputs encode exactly as
before (the check never changes codes or scales). Inputs that are checked encode up to ~10× slower
(2048×2048 float32 at 1e-6: 0.07 → 0.6 s for ``nf4``) with a bounded extra memory (the rows are
reconstructed 2^18 entries at a time).

The last term is float32's own resolution: data below the float32 normal range (1.2e-38) can only
come back with the absolute precision of float32 itself (``2^−149`` = 1.4e-45), as a cast to float32
would (float64 rows of ``1e−300`` decode to zeros, as ``x.astype(float32)`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "F32_MAX",
    "F32_TINY",
    "precise_scale_floor",
    "check_float32_range",
    "fit_float32_peak",
    "check_row_precision",
]

F32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)  # 2^-149 = 1.4e-45
_FLOORS = {"float16": 2.0**-18, "float32": 2.0**-143}  # 64 × the smallest subnormal
_SMALLEST = {"float16": 2.0**-24, "float32": 2.0**-149}
# refuse when ‖x̂ − x‖ > _FACTOR·‖x̂* − x‖ + _REL·‖x‖ + _ABS·√n (x̂* with exact scales)
_FACTOR = 2.0
_REL = 2.0**-7
_ABS = 4 * F32_TINY
_CHUNK = 1 << 18  # entries reconstructed at a time by the check


def precise_scale_floor(scale_dtype: str) -> float:
    """Smallest scale that ``scale_dtype`` stores within ``2^−7`` relative (64 subnormal ulps)."""
    return _FLOORS[scale_dtype]


def check_float32_range(amax: float, what: str) -> None:
    """Refuse an input whose largest magnitude ``amax`` is beyond float32 (decoded values are)."""
    if amax > F32_MAX:
        raise ValueError(
            f"{what} decodes to float32: max|x| = {amax:.4g} is beyond the float32 range "
            f"({F32_MAX:.4g}); rescale the data"
        )


def fit_float32_peak(
    scale: np.ndarray, peak: float, offset: np.ndarray | None = None
) -> np.ndarray:
    """Lower float32 scales whose decoded peak ``fl32(s·peak)`` (``+ offset``) would overflow.

    Parameters
    ----------
    scale : numpy.ndarray
        Nonnegative float32 scales (modified in place and returned).
    peak : float
        Largest magnitude of the element table (``qmax`` for INT, the largest normal for a
        minifloat, 1 for NF4); exact in float32.
    offset : numpy.ndarray, optional
        float32 offsets added after the product (affine INT), same shape as ``scale``.

    Returns
    -------
    numpy.ndarray
        The scales, each the largest float32 ``≤`` its input with a finite decoded peak.
    """
    p = np.float32(peak)
    o = np.zeros_like(scale) if offset is None else offset

    def overflow() -> np.ndarray:
        return ~np.isfinite(scale * p + o)

    with np.errstate(over="ignore", invalid="ignore"):
        bad = overflow()
        for _ in range(64):  # each step lowers by one ulp; one or two steps are enough
            if not bad.any():
                break
            scale[bad] = np.nextafter(scale[bad], np.float32(0))
            bad = overflow()
    return scale


def check_row_precision(
    x2: np.ndarray,
    stored: Sequence[np.ndarray],
    exact: Sequence[np.ndarray],
    reconstruct: Callable[..., np.ndarray],
    *,
    what: str,
    scale_dtype: str,
    hint: str,
) -> None:
    """Refuse rows whose stored scales make the error much larger than exact scales would.

    Parameters
    ----------
    x2 : numpy.ndarray
        The ``(rows, n)`` input being encoded.
    stored, exact : sequence of numpy.ndarray
        Per-row parameters (scales, offsets ...), each of shape ``(rows,)`` or ``(rows, groups)``:
        as stored, and exact (float64). Only rows where an exact parameter is nonzero and below
        :func:`precise_scale_floor` in magnitude are checked.
    reconstruct : callable
        ``reconstruct(x_rows, *params) -> x̂_rows`` (float64 arithmetic, the format's rounding).
    what : str
        Name of the format, for the message.
    scale_dtype : str
        Dtype of the stored scales, for the message.
    hint : str
        The remedy, for the message.

    Raises
    ------
    ValueError
        A row whose error with the stored scales exceeds ``2·‖x̂* − x‖ + 2^−7·‖x‖ + 4·2^−149·√n``.
    """
    floor = _FLOORS[scale_dtype]
    suspect = np.zeros(x2.shape[0], bool)
    for a in exact:
        mag = np.abs(a).reshape(x2.shape[0], -1)
        suspect |= np.any((mag > 0) & (mag < floor), axis=1)
    rows = np.flatnonzero(suspect)
    if rows.size == 0:
        return
    n = x2.shape[1]
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, rows.size, step):
        r = rows[start : start + step]
        xr = np.asarray(x2[r], np.float64)
        m = np.abs(xr).max(axis=1)
        m = np.where(m > 0, m, 1.0)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            got = reconstruct(xr, *[np.asarray(a[r], np.float64) for a in stored])
            ref = reconstruct(xr, *[np.asarray(a[r], np.float64) for a in exact])
            # errors of the float32 results, in units of each row's max (no under/overflow)
            e_got = np.linalg.norm((got.astype(np.float32) - xr) / m[:, None], axis=1)
            e_ref = np.linalg.norm((ref.astype(np.float32) - xr) / m[:, None], axis=1)
            norm = np.linalg.norm(xr / m[:, None], axis=1)
            allowed = _FACTOR * e_ref + _REL * norm + _ABS * np.sqrt(n) / m
        bad = np.flatnonzero(e_got > allowed)
        if bad.size:
            i = bad[0]
            raise ValueError(
                f"{what}: row {int(r[i])} (max|x| = {float(np.abs(xr[i]).max()):.3g}) is too small "
                f"for {scale_dtype} scales: below {floor:.2g} a {scale_dtype} scale "
                f"is imprecise (smallest positive {_SMALLEST[scale_dtype]:.3g}), and the row would "
                f"decode with a relative error of {e_got[i] / norm[i]:.3g} instead of "
                f"{e_ref[i] / norm[i]:.3g}; {hint}"
            )
