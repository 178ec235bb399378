"""RTN, GPTQ/LDLQ and WaterSIC as registered quantizers: ``mq.get("watersic").encode(w, sigma=Σ_X)``.

Each family wraps its algorithm (:func:`~mmquant.weightonly.rtn.rtn`,
:func:`~mmquant.weightonly.gptq.gptq`, :func:`~mmquant.weightonly.watersic.watersic`) in the
quantizer contract of :mod:`mmquant.core`: :meth:`~mmquant.core.Quantizer.encode` takes the
``(a, n)`` weights of a layer ``y = Wx`` and, as the keyword ``sigma``, the ``(n, n)`` input
covariance ``Σ_X = E[xxᵀ]``, and returns an :class:`~mmquant.core.Encoded` record that holds
exactly what :class:`~mmquant.weightonly.result.WeightQuant` stores: the bitstream as ``codes``
and the side arrays ``unit``, ``col_scale``, ``row_scale``, ``live``, ``std_index``, ``bounds``
(see :mod:`~mmquant.weightonly.result`); a rotation is shared randomness, the record's ``seed``.
:meth:`~mmquant.core.Quantizer.decode` needs only the record (not Σ_X), so ``mq.save``,
``mq.load``, ``mmquant inspect`` and ``mmquant dequantize`` work on weight-only results.

Without ``sigma`` the covariance is the identity: weight-only quantization with ``Σ_X = I`` is
ordinary MSE quantization of ``W`` (WaterSIC and GPTQ then reduce to a uniform step per column).

The WMSE, empirical entropies and the rate search's figures are diagnostics in
:attr:`~mmquant.core.Encoded.stats`. :meth:`WeightOnlyQuantizer.quantize_weights` returns the
full :class:`~mmquant.weightonly.result.WeightQuant` (reconstruction, codes, steps, γ ...);
:func:`~mmquant.weightonly.metrics.quantize_layer` and ``mmquant weights`` use it.

These families are not run by ``mmquant compare`` (``variants()`` is empty): they quantize a
weight matrix for a given input covariance, not both operands of a product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.layout import Layout, SideArray, side_array
from mmquant.validation import check_choice, check_float, check_int
from mmquant.weightonly.coding import MAX_CODE_SPAN
from mmquant.weightonly.grids import GRIDS
from mmquant.weightonly.result import WeightQuant, decode_stored, index_key

__all__ = [
    "WeightOnlyQuantizer",
    "RTN",
    "GPTQ",
    "WaterSIC",
    "E8SIC",
    "MAX_ORTHOGONAL_ROTATION",
    "MAX_IDENTITY_INPUTS",
]

#: Most live inputs of a rotated record whose width has no Hadamard matrix (the random orthogonal
#: rotation costs a QR factorisation, O(m³), and m² floats).
MAX_ORTHOGONAL_ROTATION = 4096
#: Without ``sigma`` the covariance is the n×n identity: allowed for ``n ≤ max(this, 4·a)`` inputs
#: (its float64 copies then cost at most a few times W), else refused (pass Σ_X explicitly).
MAX_IDENTITY_INPUTS = 1024
#: A Hadamard rotation of m live inputs may hold up to this many times the matrix's entries.
_ROTATION_PER_ENTRY = 16
_MAX_CODE = 2**30


class WeightOnlyQuantizer(Quantizer):
    """Shared part of the weight-only families (not registered itself).

    Subclasses are frozen dataclasses with the fields ``rate``, ``step``, ``rotate``, ``seed``
    and ``dead`` (and their own options) and implement :meth:`_run`.
    """

    rate: float | None
    step: float | None
    rotate: bool
    seed: int
    dead: float

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """None: weight-only families are not part of ``mmquant compare``."""
        return []

    def nominal_rate(self, n: int | None = None) -> float | None:
        """The target ``rate`` (bits per weight, side information included), ``None`` with a
        step (the data decide the rate)."""
        return None if self.rate is None else float(self.rate)

    # -- validation -----------------------------------------------------------------------
    def _check_common(self, *, rate_used: bool) -> None:
        """Validate rate/step/rotate/seed/dead; a step (or a grid without a rate) drops the rate."""
        default_rate = type(self).__dataclass_fields__["rate"].default  # type: ignore[attr-defined]
        if self.step is not None:
            check_float(self.step, "step", 0.0, hi=1e10, lo_open=True)
        if self.step is not None or not rate_used:
            if self.rate is not None and self.rate != default_rate:
                why = "a step is given" if self.step is not None else "this grid has a fixed rate"
                raise ValueError(f"{self.name}: give rate or step, not both ({why})")
            object.__setattr__(self, "rate", None)
        else:
            if self.rate is None:
                raise ValueError(f"{self.name}: give a rate (bits/weight) or a step")
            check_float(self.rate, "rate", 0.0, hi=32.0, lo_open=True)
        if not isinstance(self.rotate, (bool, np.bool_)):
            raise TypeError(f"rotate must be a bool, got {type(self.rotate).__name__}")
        check_int(self.seed, "seed", 0, 2**32 - 1)
        check_float(self.dead, "dead", 0.0, hi=1.0, hi_open=True)

    # -- what the subclasses implement ----------------------------------------------------
    def _run(self, w: np.ndarray, sigma: Any) -> WeightQuant:  # pragma: no cover - abstract
        raise NotImplementedError

    def _coding(self) -> str:
        """``"entropy"``, another column code (``"e8"``) or ``"fixed:<bits>"``."""
        return "entropy"

    def _group(self) -> int | None:
        """Columns per ``row_scale`` group (``None``: one group of all live columns)."""
        return None

    def _scale_arrays(self, a: int, n: int) -> tuple[dict[str, SideArray], frozenset[str]]:
        """Declared scale arrays (beside ``unit``, ``live`` and the coder's) and optional names."""
        return {}, frozenset()

    # -- public ---------------------------------------------------------------------------
    def quantize_weights(self, w: Any, sigma: Any = None) -> WeightQuant:
        """Quantize ``W`` (``a×n``) for inputs of covariance ``sigma`` (default identity).

        Parameters
        ----------
        w : array_like
            ``(a, n)`` weights of a layer ``y = Wx`` (quantized along ``n``).
        sigma : array_like, optional
            ``(n, n)`` input covariance Σ_X; ``None``: the identity (plain MSE).

        Returns
        -------
        WeightQuant
            The full result (reconstruction, codes, steps, measured rate, WMSE ...).
        """
        arr = np.asarray(w)
        if arr.ndim != 2:
            raise ValueError(f"W must be 2-D (a, n), got shape {arr.shape}")
        if sigma is None:
            a, n = arr.shape
            if n > max(MAX_IDENTITY_INPUTS, 4 * a):
                raise ValueError(
                    f"W has {n} inputs and {a} rows: without sigma the covariance is the n×n "
                    f"identity, allowed for n ≤ max({MAX_IDENTITY_INPUTS}, 4·a) = "
                    f"{max(MAX_IDENTITY_INPUTS, 4 * a)} (its copies would dwarf W); pass sigma "
                    "explicitly"
                )
            sigma = np.eye(n)
        return self._run(arr, sigma)

    def _encode(self, x: np.ndarray, *, sigma: Any = None) -> Encoded:
        """Encode ``W`` (``x``, ``(a, n)``) for inputs of covariance ``sigma`` (default identity)."""
        q = self.quantize_weights(x, sigma)
        stats = {
            "wmse": q.wmse,
            "entropy": q.entropy,
            "entropy_pooled": q.entropy_pooled,
            "damping": q.damping,
            **{k: float(v) for k, v in q.info.items()},
        }
        if math.isfinite(q.y_step):
            stats["y_step"] = q.y_step
        enc = Encoded(
            codes=q.stream,
            side=q.side,
            shape=q.shape,
            spec=self.spec,
            seed=q.rotation_seed,
            stats=stats,
        )
        self.check(enc)  # never write a record the decoder refuses (e.g. too wide a rotation)
        return enc

    def layout(self, shape: tuple[int, ...]) -> Layout | None:
        """Record of an ``(a, n)`` matrix (``None`` for other shapes: :meth:`check` refuses them).

        ``unit`` float32 ``(1,)``; ``live`` uint8 ``(⌈n/8⌉,)``, only when an input is dead;
        entropy coding: ``std_index`` (E8: ``e8_index``) uint8 ``(n,)``, ``bounds`` int32 ``(2,)`` and a bitstream of
        32-bit words; fixed width: the packed codes of every entry; the scale arrays of the
        family. The seed is the spec's when ``rotate``.
        """
        if len(shape) != 2:
            return None
        a, n = (int(s) for s in shape)
        side = {"unit": side_array("float32", 1), "live": side_array("uint8", -(-n // 8))}
        scales, optional = self._scale_arrays(a, n)
        side.update(scales)
        coding = self._coding()
        if not coding.startswith("fixed:"):
            side[index_key(coding)] = side_array("uint8", n)
            side["bounds"] = side_array("int32", 2)
            codes: int | tuple[int, int | None] = (0, None)
            multiple = 4
        else:
            from mmquant.packing import packed_nbytes

            codes, multiple = packed_nbytes(a * n, int(coding.split(":")[1])), 1
        return Layout(
            codes=codes,
            side=side,
            seed=int(self.seed) if self.rotate else None,
            codes_multiple=multiple,
            optional=frozenset({"live"}) | optional,
        )

    def check(self, enc: Encoded) -> None:
        """As :meth:`mmquant.core.Quantizer.check`; the record must be 2-D."""
        if isinstance(enc, Encoded) and len(enc.shape) != 2:
            raise ValueError(
                f"record shape {enc.shape!r} is invalid: {self.name} stores a 2-D (a, n) matrix"
            )
        super().check(enc)

    def _live(self, enc: Encoded) -> np.ndarray:
        n = enc.shape[1]
        if "live" not in enc.side:
            return np.ones(n, bool)
        bits = np.unpackbits(enc.side["live"])
        if np.any(bits[n:]):
            raise ValueError("record side array 'live' has bits set after the last input")
        return bits[:n].astype(bool)

    def _check_stored(self, enc: Encoded) -> None:
        a, n = enc.shape
        live = self._live(enc)
        m = int(live.sum())
        if m == 0 or ("live" in enc.side and m == n):
            raise ValueError(
                f"record side array 'live' marks {m} of {n} inputs live: expected 1 to {n - 1} "
                "(the mask is stored only when an input is dead)"
            )
        if self.rotate:
            from mmquant.rotations import RandomizedHadamard, rotation

            if m > MAX_ORTHOGONAL_ROTATION and (
                not isinstance(rotation(m), RandomizedHadamard)
                or m * m > _ROTATION_PER_ENTRY * a * n
            ):
                raise ValueError(
                    f"record rotates {m} live inputs: a rotated record may have at most "
                    f"{MAX_ORTHOGONAL_ROTATION} live inputs, or a Hadamard width m with "
                    f"m² ≤ {_ROTATION_PER_ENTRY}·a·n"
                )
        if "row_scale" in enc.side and self._group() is not None:
            g = self._group()
            groups = -(-m // g)  # type: ignore[operator]
            if enc.side["row_scale"].shape[1] != groups:
                raise ValueError(
                    f"record side array 'row_scale' has {enc.side['row_scale'].shape[1]} groups "
                    f"per row; {m} live inputs in groups of {g} need {groups}"
                )
        elif "row_scale" in enc.side and enc.side["row_scale"].shape[1] != 1:
            raise ValueError(
                f"record side array 'row_scale' has {enc.side['row_scale'].shape[1]} groups per "
                "row, expected 1"
            )
        if self._coding() == "e8":
            lo, hi = (int(v) for v in enc.side["bounds"])
            if not (lo < 0 < hi and hi - lo <= MAX_CODE_SPAN):
                raise ValueError(
                    f"record side array 'bounds' is [{lo}, {hi}]: expected lo < 0 < hi, at most "
                    f"{MAX_CODE_SPAN} apart"
                )
            if bool(np.any(enc.side["e8_index"])) != bool(enc.codes.size):
                raise ValueError(
                    f"record codes hold {enc.codes.size} bytes but {int(np.count_nonzero(enc.side['e8_index']))} "
                    "columns are coded (a stream exactly when some column is)"
                )
            if enc.codes.size and not np.any(enc.codes[-4:]):
                raise ValueError("record codes are not an rANS bitstream (last word is zero)")
        if self._coding() == "entropy":
            lo, hi = (int(v) for v in enc.side["bounds"])
            if not (-_MAX_CODE <= lo <= hi <= _MAX_CODE and hi - lo <= MAX_CODE_SPAN):
                raise ValueError(
                    f"record side array 'bounds' is [{lo}, {hi}]: expected lo ≤ hi within ±2^30, "
                    f"at most {MAX_CODE_SPAN} apart"
                )
            if lo == hi and enc.codes.size:
                raise ValueError(
                    f"record codes hold {enc.codes.size} bytes but its codes are all {lo} "
                    "(nothing is coded)"
                )
            if lo != hi and not enc.codes.size:
                raise ValueError(
                    f"record codes are empty but its codes range over [{lo}, {hi}] (not coded)"
                )
            if enc.codes.size and not np.any(enc.codes[-4:]):
                raise ValueError("record codes are not an rANS bitstream (last word is zero)")

    def _decode(self, enc: Encoded) -> np.ndarray:
        with np.errstate(all="ignore"):  # corrupt scales: decode() refuses non-finite output
            return decode_stored(
                enc.codes,
                enc.side,
                (int(enc.shape[0]), int(enc.shape[1])),
                self._coding(),
                self._group(),
                int(self.seed) if self.rotate else None,
            )


@register("rtn")
@dataclass(frozen=True)
class RTN(WeightOnlyQuantizer):
    """Round to nearest, no error feedback (Σ_X measures the WMSE and finds dead inputs).

    Parameters
    ----------
    rate : float or None
        Target measured rate in bits/weight, side information included (``grid="uniform"``);
        ``None`` with ``step`` or ``grid="int"`` (a step or an INT grid fixes the rate).
    grid : {"uniform", "int"}
        Entropy-coded uniform step, or absmax INT per row/group at a fixed width.
    step : float, optional
        Uniform step Δ instead of the rate search.
    bits, group : int
        INT width (2..16) and group size (``None``: one scale per row).
    rotate, seed : bool, int
        Random rotation of the input basis (randomized Hadamard when possible), its seed.
    dead : float
        Dead-input threshold (relative diagonal of Σ_X below which an input is dropped).
    """

    description = "weight-only round to nearest (encode(w, sigma=Σ_X))"

    rate: float | None = 4.0
    grid: str = "uniform"
    step: float | None = None
    bits: int = 4
    group: int | None = None
    rotate: bool = False
    seed: int = 0
    dead: float = 1e-3

    def __post_init__(self) -> None:
        check_choice(self.grid, "grid", GRIDS)
        check_int(self.bits, "bits", 2, 16)
        if self.group is not None:
            check_int(self.group, "group", 1, 2**31 - 1)
        if self.grid == "int" and self.step is not None:
            raise ValueError(f"{self.name}: step is for grid=uniform")
        self._check_common(rate_used=self.grid == "uniform")

    def _coding(self) -> str:
        return "entropy" if self.grid == "uniform" else f"fixed:{self.bits}"

    def _group(self) -> int | None:
        return self.group if self.grid == "int" else None

    def _scale_arrays(self, a: int, n: int) -> tuple[dict[str, SideArray], frozenset[str]]:
        if self.grid == "int":
            return {"row_scale": side_array("float16", a, None)}, frozenset()
        return {}, frozenset()

    def _run(self, w: np.ndarray, sigma: Any) -> WeightQuant:
        from mmquant.weightonly.rtn import rtn

        return rtn(w, sigma, self.rate, **self._grid_options())

    def _grid_options(self) -> dict[str, Any]:
        return {
            "grid": self.grid,
            "step": self.step,
            "bits": self.bits,
            "group": self.group,
            "rotate": self.rotate,
            "seed": self.seed,
            "dead": self.dead,
        }


@register("gptq")
@dataclass(frozen=True)
class GPTQ(RTN):
    """GPTQ/LDLQ: RTN's grids with error feedback through the Cholesky factor of Σ_X.

    Parameters as :class:`RTN`, and ``damp`` (relative damping of Σ_X). ``gptq:rotate=true``
    is GPTQ after a random rotation (QuIP-style incoherence processing).

    ``base`` runs GPTQ on a registered block format with static groups
    (:func:`~mmquant.weightonly.gptq.gptq_on_format`): ``gptq:base=nvfp4``, ``base=mxfp4``,
    ``base=nf4``, ``base=int`` or a spec with ``;`` for its commas, ``base=int:bits=3;group=64``.
    The record holds exactly a record of the base format (same layout, same rate), decoded by the
    base's decoder; the base fixes the grid, so ``rate``, ``grid``, ``step``, ``bits``, ``group``
    and ``rotate`` keep their defaults.
    """

    description = "weight-only GPTQ/LDLQ (encode(w, sigma=Σ_X)); rotate=true: with a rotation"

    damp: float = 1e-4
    base: str | None = None

    def __post_init__(self) -> None:
        if self.base is None:
            super().__post_init__()
        else:
            self._check_base()
        check_float(self.damp, "damp", 0.0, hi=1.0)

    def _check_base(self) -> None:
        """Validate ``base`` (a block format's spec) and store its canonical form."""
        if not isinstance(self.base, str) or not self.base.strip():
            raise ValueError(f"gptq: base must be a format spec, got {self.base!r}")
        fields = type(self).__dataclass_fields__  # type: ignore[attr-defined]
        for key in ("rate", "grid", "step", "bits", "group", "rotate"):
            if getattr(self, key) != fields[key].default:
                raise ValueError(
                    f"gptq:base={self.base}: {key} is fixed by the base format (the record is "
                    f"one of {self.base!r}); leave it at its default"
                )
        check_int(self.seed, "seed", 0, 2**32 - 1)
        check_float(self.dead, "dead", 0.0, hi=1.0, hi_open=True)
        q = _base_quantizer(self.base)
        object.__setattr__(self, "base", q.spec.replace(",", ";"))

    def base_quantizer(self) -> Quantizer | None:
        """The base format's quantizer (``None`` without ``base``)."""
        return None if self.base is None else _base_quantizer(self.base)

    def layout(self, shape: tuple[int, ...]) -> Layout | None:
        """RTN's layout, or with ``base`` exactly the base format's (2-D shapes only)."""
        q = self.base_quantizer()
        if q is None:
            return super().layout(shape)
        return q.layout(shape) if len(shape) == 2 else None

    def _check_stored(self, enc: Encoded) -> None:
        q = self.base_quantizer()
        if q is None:
            super()._check_stored(enc)
        else:
            q._check_stored(enc)

    def _decode(self, enc: Encoded) -> np.ndarray:
        q = self.base_quantizer()
        return super()._decode(enc) if q is None else q._decode(enc)

    def _run(self, w: np.ndarray, sigma: Any) -> WeightQuant:
        from mmquant.weightonly.gptq import gptq, gptq_on_format

        q = self.base_quantizer()
        if q is not None:
            fmt = q.block_format()  # type: ignore[attr-defined]
            return gptq_on_format(w, sigma, fmt, damp=self.damp, dead=self.dead)
        return gptq(w, sigma, self.rate, damp=self.damp, **self._grid_options())


def _base_quantizer(base: str) -> Quantizer:
    """The registered block format a ``gptq:base=...`` names (``;`` for the commas of its spec)."""
    from mmquant.core import get

    q = get(base.replace(";", ","))
    if not callable(getattr(q, "block_format", None)) or isinstance(q, WeightOnlyQuantizer):
        raise ValueError(
            f"gptq: base={base!r} is not a block format (int, fp, nf4, mxfp4/6/8, mxint8, "
            "nvfp4, compander, lloydmax, uniform)"
        )
    return q


@register("watersic")
@dataclass(frozen=True)
class WaterSIC(WeightOnlyQuantizer):
    """WaterSIC: one Y-domain step, entropy-coded integers, LMMSE shrink and rescalers.

    Parameters
    ----------
    rate : float or None
        Target measured rate in bits/weight, side information included (``None`` with ``step``).
    step : float, optional
        Y-domain step ``c`` instead of the rate search.
    lmmse : bool
        Per-column LMMSE shrink γ_j.
    rescale : {"none", "columns", "both"}
        Fitted diagonal rescalers (``"both"`` adds one float16 per row when it helps).
    rotate, seed, damp, dead
        As in :class:`GPTQ`.
    """

    description = "weight-only WaterSIC (encode(w, sigma=Σ_X))"

    rate: float | None = 4.0
    step: float | None = None
    lmmse: bool = True
    rescale: str = "columns"
    rotate: bool = False
    seed: int = 0
    damp: float = 1e-4
    dead: float = 1e-3

    def __post_init__(self) -> None:
        check_choice(self.rescale, "rescale", ("none", "columns", "both"))
        if not isinstance(self.lmmse, (bool, np.bool_)):
            raise TypeError(f"lmmse must be a bool, got {type(self.lmmse).__name__}")
        check_float(self.damp, "damp", 0.0, hi=1.0)
        self._check_common(rate_used=True)

    def _scale_arrays(self, a: int, n: int) -> tuple[dict[str, SideArray], frozenset[str]]:
        side = {"col_scale": side_array("float16", n)}
        if self.rescale == "both":  # T is kept only when it lowers the WMSE
            side["row_scale"] = side_array("float16", a, 1)
            return side, frozenset({"row_scale"})
        return side, frozenset()

    def _run(self, w: np.ndarray, sigma: Any) -> WeightQuant:
        from mmquant.weightonly.watersic import watersic

        return watersic(
            w,
            sigma,
            self.rate,
            step=self.step,
            lmmse=self.lmmse,
            rescale=self.rescale,
            rotate=self.rotate,
            seed=self.seed,
            damp=self.damp,
            dead=self.dead,
        )


@register("e8sic")
@dataclass(frozen=True)
class E8SIC(WaterSIC):
    """E8-SIC: WaterSIC's column loop with each column quantized on the lattice E8.

    Blocks of 8 entries of a column (its ``a`` rows) go to E8 with the column's Y-domain step,
    the points are entropy coded with one model index per column
    (:mod:`~mmquant.weightonly.e8coding`); LMMSE shrink, error feedback and rescalers as in
    :class:`WaterSIC` (:func:`~mmquant.weightonly.vsic.vector_sic`).

    Parameters
    ----------
    rate, step, lmmse, rescale, rotate, seed, damp, dead
        As in :class:`WaterSIC`.
    mmse : float
        MMSE feedback damping factor (δ ≥ mmse·D̂/σ², 0 to 100; 0: WaterSIC's damping only).
    wiener : float
        Pre-filter strength α in [0, 1] (:func:`~mmquant.weightonly.vsic.wiener_target`; 0: off).
    feedback : float
        The loop feeds back each column shrunk by ``γ_j^feedback`` (0 to 1; 1: WaterSIC's loop).
    """

    description = "weight-only SIC with E8 lattice columns (encode(w, sigma=Σ_X))"

    mmse: float = 1.0
    wiener: float = 0.5
    feedback: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.mmse, "mmse", 0.0, hi=100.0)
        check_float(self.wiener, "wiener", 0.0, hi=1.0)
        check_float(self.feedback, "feedback", 0.0, hi=1.0)

    def _coding(self) -> str:
        return "e8"

    def _run(self, w: np.ndarray, sigma: Any) -> WeightQuant:
        from mmquant.weightonly.vsic import vector_sic

        return vector_sic(
            w,
            sigma,
            self.rate,
            code="e8",
            step=self.step,
            lmmse=self.lmmse,
            rescale=self.rescale,
            mmse=self.mmse,
            wiener=self.wiener,
            feedback=self.feedback,
            rotate=self.rotate,
            seed=self.seed,
            damp=self.damp,
            dead=self.dead,
        )
