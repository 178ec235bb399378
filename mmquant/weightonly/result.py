"""The record every weight-only quantizer returns, its exact decoder, and what it costs in bits.

Stored representation of ``Ŵ`` (every array in the dtype it would be written with)::

    Ŵ'_rj = unit · Z_rj · col_scale_j · row_scale_{r, ⌊j/g⌋}        (absent factors are 1)
    Ŵ     = scatter_live(Ŵ'_live · U)                               (U the rotation, if any)

* ``Z`` -- the integer codes: entropy coded column by column (:mod:`~.coding`, one uint8 model
  index per column) or packed at a fixed width (absmax grids);
* ``unit`` -- one float32 per matrix (so that float16 scales are relative, never subnormal);
* ``col_scale`` -- one float16 per column (WaterSIC: ``Γ_j·γ_j·c/L_jj``), 16 bits per column;
* ``row_scale`` -- one float16 per row and group (absmax grids; WaterSIC's rescaler ``T``);
* ``live`` -- packed bit mask of the live inputs, stored only when some input is dead;
* the rotation ``U`` is shared randomness rebuilt from its seed (like a dither), not stored.

``bits_per_weight = 8·(bitstream bytes + side bytes)/(a·n)`` is the measured rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mmquant.packing import pack, unpack
from mmquant.weightonly.coding import ColumnStream, decode_columns, encode_columns

__all__ = [
    "WeightQuant",
    "decode",
    "decode_stored",
    "build_result",
    "index_key",
    "rotation_matrix",
]


def index_key(coding: str) -> str:
    """Side-array name of the per-column model indices: ``std_index`` for the scalar coder,
    ``<code>_index`` (``e8_index``) for another column code, so that a record of one code does
    not pass the layout of another."""
    return "std_index" if coding == "entropy" else f"{coding}_index"


def rotation_matrix(n: int, seed: int) -> np.ndarray:
    """Orthogonal ``n×n`` matrix ``U`` of :func:`mmquant.rotations.rotation` (Hadamard if possible)."""
    from mmquant.rotations import rotation

    return np.asarray(rotation(n, seed).matrix(), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class WeightQuant:
    """A quantized weight matrix: reconstruction, codes, scales, measured rate and distortion.

    Attributes
    ----------
    method : str
        ``"rtn"``, ``"gptq"`` or ``"watersic"`` (``+rot`` when rotated).
    w_hat : numpy.ndarray
        ``(a, n)`` float64 reconstruction Ŵ (equal to :func:`decode` of the stored data).
    codes : numpy.ndarray
        ``(a, n)`` int64 integer codes Z (in the rotated basis when rotated; 0 for dead inputs).
    steps : numpy.ndarray
        ``(n,)`` W-domain quantizer step of each column before shrinkage and rescaling
        (WaterSIC: ``c/L_jj``; GPTQ/RTN uniform: Δ; absmax grids: NaN, see ``row_scale``).
    y_step : float
        WaterSIC's Y-domain step ``c`` (NaN for the other methods).
    gamma : numpy.ndarray
        ``(n,)`` LMMSE shrink factors γ_j (1 where not used).
    row_rescale, col_rescale : numpy.ndarray or None
        Diagonal rescalers T (rows) and Γ (columns), if fitted.
    side : Mapping[str, numpy.ndarray]
        Stored side information (``unit``, ``col_scale``, ``row_scale``, ``live``, model indices,
        bounds), each in its stored dtype.
    stream : numpy.ndarray
        The integer codes' bitstream (entropy coded) or packed bytes (fixed width), ``uint8``.
    coding : str
        ``"entropy"`` (per-column Gaussian models) or ``"fixed:<bits>"``.
    bits_per_weight : float
        Measured rate: 8·(stream + side bytes)/(a·n).
    side_bits_per_weight : float
        The part of ``bits_per_weight`` spent on side information.
    entropy : float
        Empirical entropy of the codes, one histogram per column, averaged (bits/weight).
    entropy_pooled : float
        Empirical entropy with one histogram for the whole matrix (bits/weight).
    wmse : float
        ``tr((W − Ŵ)Σ_X(W − Ŵ)ᵀ)/(a·n)`` with the undamped Σ_X.
    damping : float
        Absolute damping δ used in the Cholesky factorisation.
    live : numpy.ndarray
        ``(n,)`` bool, the inputs that were not dropped as dead.
    rotation_seed : int or None
        Seed of the rotation U (None: no rotation).
    group : int
        Columns per ``row_scale`` group.
    info : Mapping[str, float]
        Diagnostics (rate search iterations, target rate ...), not stored.
    """

    method: str
    w_hat: np.ndarray
    codes: np.ndarray
    steps: np.ndarray
    y_step: float
    gamma: np.ndarray
    row_rescale: np.ndarray | None
    col_rescale: np.ndarray | None
    side: Mapping[str, np.ndarray]
    stream: np.ndarray
    coding: str
    bits_per_weight: float
    side_bits_per_weight: float
    entropy: float
    entropy_pooled: float
    wmse: float
    damping: float
    live: np.ndarray
    rotation_seed: int | None
    group: int
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(a, n)``."""
        return (int(self.w_hat.shape[0]), int(self.w_hat.shape[1]))

    @property
    def nbytes(self) -> int:
        """Stored bytes: bitstream plus side information."""
        return int(self.stream.nbytes + sum(v.nbytes for v in self.side.values()))


def _reconstruct(
    z: np.ndarray,
    unit: float,
    col_scale: np.ndarray | None,
    row_scale: np.ndarray | None,
    group: int,
    live: np.ndarray,
    rotation_seed: int | None,
    coding: str = "entropy",
) -> np.ndarray:
    """Ŵ from the stored values; scales act in the working basis (live inputs, rotated)."""
    m = int(live.sum())
    every = m == z.shape[1]
    zl = z if every else z[:, live]
    if coding == "entropy" or coding.startswith("fixed:"):
        wl = zl.astype(np.float64)
        wl *= unit
    else:  # a column code's points (E8: z/2)
        from mmquant.weightonly.columncodes import column_code

        wl = column_code(coding).points(zl)
        wl *= unit
    del zl
    if col_scale is not None:
        wl *= col_scale[live].astype(np.float64)[None, :]
    if row_scale is not None:
        rs = row_scale.astype(np.float64)
        for g0 in range(0, m, group):  # one group of columns at a time (no a×m repeat)
            wl[:, g0 : g0 + group] *= rs[:, g0 // group][:, None]
    if rotation_seed is not None:
        wl = wl @ rotation_matrix(m, rotation_seed)
    if every:
        return wl
    w = np.zeros(z.shape, np.float64)
    w[:, live] = wl
    return w


def build_result(
    *,
    method: str,
    z: np.ndarray,
    unit: float,
    col_scale: np.ndarray | None,
    row_scale: np.ndarray | None,
    group: int,
    live: np.ndarray,
    rotation_seed: int | None,
    fixed_bits: int | None,
    sigma: np.ndarray,
    w: np.ndarray,
    code: str = "entropy",
    **extra: object,
) -> WeightQuant:
    """Encode the codes, assemble the side information and measure rate and WMSE.

    ``z`` is ``(a, n)`` over all inputs (zeros for dead ones); ``col_scale`` ``(n,)`` float16;
    ``row_scale`` ``(a, G)`` float16; ``fixed_bits``: pack ``z + 2^{b−1}`` at ``b`` bits instead of
    entropy coding with the column code ``code`` (:mod:`~mmquant.weightonly.columncodes`).
    ``sigma`` and ``w`` are the full undamped Σ_X and the original W.
    """
    from mmquant.entropy import empirical_entropy
    from mmquant.weightonly.covariance import wmse

    a, n = z.shape
    side: dict[str, np.ndarray] = {"unit": np.array([unit], np.float32)}
    if col_scale is not None:
        side["col_scale"] = np.asarray(col_scale, np.float16)
    if row_scale is not None:
        side["row_scale"] = np.asarray(row_scale, np.float16)
    if not np.all(live):
        side["live"] = np.packbits(live)
    if fixed_bits is None:
        if code == "entropy":
            cs = encode_columns(z)
        else:
            from mmquant.weightonly.columncodes import column_code

            cs = column_code(code).encode(z)
        stream = cs.stream
        side[index_key(code)] = cs.std_index
        side["bounds"] = cs.bounds
        coding = code
    else:
        off = 2 ** (fixed_bits - 1)
        stream = pack((z + off).astype(np.int64), fixed_bits)
        coding = f"fixed:{fixed_bits}"
    unit32 = float(np.float32(unit))
    w_hat = _reconstruct(
        z,
        unit32,
        side.get("col_scale"),
        side.get("row_scale"),
        group,
        live,
        rotation_seed,
        coding,
    )
    nbytes = stream.nbytes + sum(v.nbytes for v in side.values())
    side_bytes = sum(v.nbytes for v in side.values())
    zl = z[:, live]
    return WeightQuant(
        method=method,
        w_hat=w_hat,
        codes=z,
        steps=np.asarray(extra.pop("steps", np.full(n, np.nan)), np.float64),
        y_step=float(extra.pop("y_step", np.nan)),  # type: ignore[arg-type]
        gamma=np.asarray(extra.pop("gamma", np.ones(n)), np.float64),
        row_rescale=extra.pop("row_rescale", None),  # type: ignore[arg-type]
        col_rescale=extra.pop("col_rescale", None),  # type: ignore[arg-type]
        side=side,
        stream=stream,
        coding=coding,
        bits_per_weight=8.0 * nbytes / (a * n),
        side_bits_per_weight=8.0 * side_bytes / (a * n),
        entropy=empirical_entropy(zl, axis=-1) * zl.size / (a * n),
        entropy_pooled=empirical_entropy(z),
        wmse=wmse(w, w_hat, sigma),
        damping=float(extra.pop("damping", 0.0)),  # type: ignore[arg-type]
        live=live,
        rotation_seed=rotation_seed,
        group=group,
        info=dict(extra.pop("info", {})),  # type: ignore[arg-type]
    )


def decode_stored(
    stream: np.ndarray,
    side: Mapping[str, np.ndarray],
    shape: tuple[int, int],
    coding: str,
    group: int | None,
    rotation_seed: int | None,
) -> np.ndarray:
    """Rebuild Ŵ from a stored bitstream and side information (see the module docstring).

    Parameters
    ----------
    stream : numpy.ndarray
        ``uint8`` bitstream (entropy coded) or packed codes (``coding = "fixed:<bits>"``).
    side : Mapping[str, numpy.ndarray]
        ``unit`` and, as stored, ``col_scale``, ``row_scale``, ``live``, ``std_index``,
        ``bounds``.
    shape : tuple of int
        ``(a, n)``.
    coding : str
        ``"entropy"``, another column code (``"e8"``) or ``"fixed:<bits>"``.
    group : int or None
        Columns per ``row_scale`` group (``None``: all live columns, one group).
    rotation_seed : int or None
        Seed of the rotation U.

    Returns
    -------
    numpy.ndarray
        ``(a, n)`` float64.
    """
    a, n = shape
    live = np.unpackbits(side["live"], count=n).astype(bool) if "live" in side else np.ones(n, bool)
    if coding == "entropy":
        z = decode_columns(
            ColumnStream(
                stream=stream, std_index=side["std_index"], bounds=side["bounds"], shape=(a, n)
            )
        )
    elif not coding.startswith("fixed:"):
        from mmquant.weightonly.columncodes import column_code

        z = column_code(coding).decode(
            ColumnStream(
                stream=stream,
                std_index=side[index_key(coding)],
                bounds=side["bounds"],
                shape=(a, n),
            )
        )
    else:
        b = int(coding.split(":")[1])
        z = unpack(stream, b, a * n).astype(np.int64).reshape(a, n) - 2 ** (b - 1)
    return _reconstruct(
        z,
        float(side["unit"][0]),
        side.get("col_scale"),
        side.get("row_scale"),
        int(live.sum()) if group is None else group,
        live,
        rotation_seed,
        coding,
    )


def decode(q: WeightQuant) -> np.ndarray:
    """Rebuild Ŵ from the stored bitstream and side information only.

    Returns
    -------
    numpy.ndarray
        ``(a, n)`` float64, equal to ``q.w_hat``.
    """
    if not isinstance(q, WeightQuant):
        raise TypeError(f"decode expects a WeightQuant, got {type(q).__name__}")
    return decode_stored(q.stream, q.side, q.shape, q.coding, q.group, q.rotation_seed)
