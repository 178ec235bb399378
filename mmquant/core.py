"""The quantizer contract: :class:`Encoded`, :class:`Quantizer`, the registry and spec strings.

A quantizer maps a real array ``x`` (quantized along its **last axis**, the inner dimension of the
product) to an :class:`Encoded` record that holds exactly what would be stored or transmitted:

* ``codes`` -- the packed integer codes (a ``uint8`` byte array, or an entropy-coded bitstream),
* ``side``  -- named side-information arrays (scales, norms, beta indices, codebooks ...), each
  stored in the dtype it would be written with, so that its ``nbytes`` is its real cost,
* ``shape``, ``spec`` (the string that rebuilds the quantizer) and ``seed`` (shared randomness).

The rate is *measured*, never typed in::

    bits_per_entry = 8 * (codes.nbytes + sum(a.nbytes for a in side.values())) / prod(shape)

Spec strings are ``"name"`` or ``"name:key=value,key=value"``; tuple-valued parameters are written
with ``;`` between items (``"e8:q=14,betas=0.2;0.3;0.4;0.5"``).

Records are treated as hostile: :meth:`Quantizer.decode` first runs :meth:`Quantizer.check`,
which verifies the record against the layout its family declares (:meth:`Quantizer.layout`:
exact code length, side arrays with their dtypes and shapes, seed; see :mod:`mmquant.layout`),
so that no decoder or kernel reads outside a buffer, and refuses non-finite reconstructions.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from mmquant.layout import Layout, check_layout, check_shape, check_size
from mmquant.specs import _convert, format_spec, parse_spec
from mmquant.validation import as_real_array, restore_like

#: Library version (written into every .mmq header).
VERSION = "0.1.0"

__all__ = [
    "VERSION",
    "Encoded",
    "Layout",
    "Quantizer",
    "register",
    "get",
    "available",
    "registry",
    "parse_spec",
    "format_spec",
    "import_plugins",
    "match_rate",
    "RATE_ROW",
    "RATE_TOLERANCE",
]


@dataclass(frozen=True, eq=False)
class Encoded:
    """What a quantizer stores for one array.

    Attributes
    ----------
    codes : numpy.ndarray
        Packed integer codes or an entropy-coded bitstream, as a 1-D ``uint8`` array.
    side : Mapping[str, numpy.ndarray]
        Named side information (scales, norms, indices ...), each array in its stored dtype.
    shape : tuple of int
        Shape of the original array (quantized along the last axis).
    spec : str
        Spec string of the quantizer that produced it (``mmquant.get(spec)`` rebuilds it).
    seed : int or None
        Seed of the shared randomness (dither, rotation), or ``None`` if the quantizer has none.
    stats : Mapping[str, float]
        Diagnostics that are *not* stored and do not count in the rate (empirical entropy in
        bits/entry, overload counts ...).
    """

    codes: np.ndarray
    side: Mapping[str, np.ndarray]
    shape: tuple[int, ...]
    spec: str
    seed: int | None = None
    stats: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = np.ascontiguousarray(self.codes)
        if codes.dtype != np.uint8 or codes.ndim != 1:
            raise TypeError(
                f"Encoded.codes must be a 1-D uint8 array, got {codes.dtype} with shape {codes.shape}"
            )
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        side = {str(k): np.ascontiguousarray(v) for k, v in dict(self.side).items()}
        object.__setattr__(self, "side", types.MappingProxyType(side))
        object.__setattr__(self, "stats", types.MappingProxyType(dict(self.stats)))

    @property
    def entries(self) -> int:
        """Number of entries of the original array."""
        return math.prod(self.shape)

    @property
    def code_bytes(self) -> int:
        """Bytes of the stored codes (bitstream)."""
        return int(self.codes.nbytes)

    @property
    def side_bytes(self) -> int:
        """Bytes of the stored side information."""
        return int(sum(a.nbytes for a in self.side.values()))

    @property
    def nbytes(self) -> int:
        """Total stored bytes: codes plus side information."""
        return self.code_bytes + self.side_bytes

    @property
    def bits_per_entry(self) -> float:
        """Measured rate in bits per entry: 8 · (stored bytes) / entries."""
        return 8.0 * self.nbytes / max(self.entries, 1)

    @property
    def side_bits_per_entry(self) -> float:
        """Part of :attr:`bits_per_entry` spent on side information (bits per entry)."""
        return 8.0 * self.side_bytes / max(self.entries, 1)


Q = TypeVar("Q", bound="Quantizer")


class Quantizer(abc.ABC):
    """Base class of every quantizer.

    Subclasses are frozen dataclasses registered with :func:`register`. They implement
    :meth:`_encode` (on a validated float array) and :meth:`_decode`; the public :meth:`encode` and
    :meth:`decode` validate their input once and check the record belongs to this quantizer.

    Class attributes
    ----------------
    name : str
        Registry name (the part of the spec string before ``:``).
    description : str
        One line shown by ``mmquant compare`` and ``mmquant.available(details=True)``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    # -- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def _encode(self, x: np.ndarray) -> Encoded:
        """Encode a validated, finite, non-empty float32/float64 array (last axis = inner dim)."""

    @abc.abstractmethod
    def _decode(self, enc: Encoded) -> np.ndarray:
        """Decode a record produced by :meth:`_encode`; returns float32 or float64."""

    # -- rates and the configurations of ``mmquant compare`` -----------------------------------
    def nominal_rate(self, n: int | None = None) -> float | None:
        """Bits per entry this configuration stores, predicted from its parameters.

        Codes and side information together, for rows of ``n`` entries (``None``: rows long
        enough that per-row side information is negligible, and divisible by every group). The
        measured rate of a record (:attr:`Encoded.bits_per_entry`) is what counts; this is what
        :func:`match_rate` compares with a target rate. ``None`` (the default) when the data
        decide the rate entirely.
        """
        return None

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """The configurations ``mmquant compare`` runs when no rate is asked for (default: none)."""
        return []

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """The configurations among which a target rate picks (default: :meth:`defaults`).

        Families whose rate is a parameter return the configuration at ``rate`` (if in range).
        """
        return cls.defaults()

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """Configurations of this family used by ``mmquant compare``.

        Parameters
        ----------
        rate : float, optional
            Target rate in bits per entry. ``None`` returns :meth:`defaults`; otherwise the one
            rate-matching rule of every family, :func:`match_rate` on :meth:`candidates`.
        """
        if rate is None:
            return cls.defaults()
        return match_rate(cls.candidates(rate), rate)

    # -- public API ---------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """Canonical spec string (only non-default parameters are written)."""
        return format_spec(self)

    def encode(self, x: Any, **kw: Any) -> Encoded:
        """Quantize ``x`` along its last axis.

        Parameters
        ----------
        x : array_like
            Real array with at least one dimension (float16/32/64; integers are converted to
            float64; torch tensors are accepted). Must be finite and non-empty.
        **kw
            Data the family's encoder takes besides ``x`` (e.g. ``sigma=`` Σ_X for the
            weight-only families); most families take none.

        Returns
        -------
        Encoded
            Packed codes, side information and the spec string; ``bits_per_entry`` is measured
            from the stored bytes.

        Raises
        ------
        TypeError
            A keyword argument the family's encoder does not take (the message names it).
        """
        if kw:
            params = inspect.signature(self._encode).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                takes = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY]
                unknown = sorted(set(kw) - set(takes))
                if unknown:
                    raise TypeError(
                        f"{self.spec!r} takes no keyword argument {', '.join(unknown)} in "
                        f"encode (it takes: {', '.join(takes) or 'none'})"
                    )
        arr = as_real_array(x, name="x", min_ndim=1)
        return self._encode(arr, **kw)

    def layout(self, shape: tuple[int, ...]) -> Layout | None:
        """What a record of this quantizer holds for an array of ``shape`` (a checked shape).

        Every family of the library declares it (:class:`mmquant.layout.Layout`: the exact code
        length or its range, the side arrays with their dtypes and shapes, the seed);
        :meth:`check` verifies records against it before any decoder runs. ``None`` (the
        default, for families defined outside the library that do not declare one) skips that
        check; the shape and size checks still apply.
        """
        return None

    def check(self, enc: Encoded) -> None:
        """Check that ``enc`` is a well-formed record of this quantizer, without decoding it.

        The record's spec must rebuild this quantizer; its shape must be 1 to 32 positive
        dimensions; it must store at least one byte per 1024 entries; its codes and side arrays
        must match :meth:`layout` (see :mod:`mmquant.layout`), and stored values that set the
        code length must be valid and agree with it. :meth:`decode` runs this first;
        :func:`mmquant.load` runs it on every record it reads.

        Raises
        ------
        TypeError
            ``enc`` is not an :class:`Encoded`.
        ValueError
            The record does not belong to this quantizer or is malformed (the message names the
            array, and what was expected against what was found).
        """
        if not isinstance(enc, Encoded):
            raise TypeError(f"decode expects an Encoded record, got {type(enc).__name__}")
        if get(enc.spec) != self:
            raise ValueError(
                f"record was produced by {enc.spec!r}, cannot decode it with {self.spec!r}"
            )
        entries = check_shape(enc.shape)
        check_size(entries, enc.nbytes)
        lay = self.layout(enc.shape)
        if lay is not None:
            check_layout(enc, lay, self.spec)
            self._check_stored(enc)

    def _check_stored(self, enc: Encoded) -> None:
        """Checks of stored values that need no decoding, run by :meth:`check` after the layout.

        For families whose code length depends on stored side values (code sizes of a union
        code, a group code's weights; an entropy coder's model tables): the values are valid
        and the codes have exactly the length they imply. Raises ``ValueError``. The default
        checks nothing (fixed layouts are checked entirely by :meth:`layout`).
        """
        return None

    def decode(self, enc: Encoded) -> np.ndarray:
        """Reconstruct the array from an :class:`Encoded` record (pure function of ``enc``).

        The record is checked first (:meth:`check`), so that no decoder reads a buffer of the
        wrong size; the reconstruction is checked to be finite, of the record's shape.

        Raises
        ------
        TypeError
            ``enc`` is not an :class:`Encoded`.
        ValueError
            The record is malformed or corrupt (wrong sizes, dtypes or seed, stored values out
            of range, a reconstruction that is not finite).
        """
        self.check(enc)
        out = self._decode(enc)
        if tuple(np.shape(out)) != enc.shape:
            raise ValueError(
                f"record of {self.spec!r} decodes to shape {np.shape(out)}, expected {enc.shape}"
            )
        if not _all_finite(out):
            raise ValueError(
                f"record of {self.spec!r} decodes to non-finite values: its codes or side "
                "information are corrupt"
            )
        return out

    def quantize(self, x: Any) -> Any:
        """Shorthand for ``decode(encode(x))`` (the reconstruction, same shape as ``x``).

        A torch tensor gives a tensor of its dtype and device; anything else a numpy array.
        """
        return restore_like(self.decode(self.encode(x)), x)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable description: ``{"name": ..., "params": {...}, "spec": ...}``."""
        params = {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"name": self.name, "params": params, "spec": self.spec}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Quantizer:
        """Rebuild a quantizer from :meth:`to_json` output."""
        return get(str(data["spec"]))

    def __str__(self) -> str:
        return self.spec


def _all_finite(a: np.ndarray) -> bool:
    """Whether every entry is finite (min and max propagate NaN; no temporary array)."""
    a = np.asarray(a)
    if a.size == 0 or a.dtype.kind not in "fc":
        return True
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def _json_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json_value(i) for i in v]
    return v


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Quantizer]] = {}

# Modules whose import registers quantizers. Imported lazily by ``get``/``available`` so that
# ``import mmquant`` stays light and optional parts (numba kernels) load only when used.
PLUGIN_MODULES: list[str] = [
    "mmquant.formats.integer",
    "mmquant.formats.minifloat",
    "mmquant.formats.block",
    "mmquant.formats.nonuniform",
    "mmquant.formats.compander",
    "mmquant.lattices.voronoi",
    "mmquant.lattices.entropy_coded",
    "mmquant.formats.timeshare",
    "mmquant.weightonly.quantizers",
    "mmquant.weightonly.tsic",
    "mmquant.trellis.quantizer",
    "mmquant.trellis.entropy_coded",
]
_loaded = False


def import_plugins(modules: Sequence[str], what: str) -> None:
    """Import every module of a plugin list (quantizer families, experiments, CLI commands).

    The one plugin loader of the package: a module that is listed but cannot be imported is a
    packaging error, so it raises instead of being skipped silently.

    Raises
    ------
    ImportError
        A listed module is missing or fails to import (the message names it and the list).
    """
    import importlib

    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            raise ImportError(f"{what}: the listed module {mod!r} does not exist") from exc


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    import_plugins(PLUGIN_MODULES, "quantizer families (mmquant.core.PLUGIN_MODULES)")
    _loaded = True


def register(name: str) -> Callable[[type[Q]], type[Q]]:
    """Class decorator that registers a quantizer family under ``name``."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"invalid quantizer name {name!r}")

    def deco(cls: type[Q]) -> type[Q]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be registered")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"quantizer name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registry() -> dict[str, type[Quantizer]]:
    """Name → class for every registered quantizer family."""
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))


def available() -> list[str]:
    """Names of every registered quantizer family, sorted."""
    return list(registry())


#: Row length at which nominal rates are compared (``mmquant compare``'s default n).
RATE_ROW = 4096
#: Largest distance (bits per entry) between a target rate and the nominal rate of a
#: configuration picked for it.
RATE_TOLERANCE = 0.5


def match_rate(
    quantizers: Sequence[Quantizer],
    rate: float,
    n: int = RATE_ROW,
    tolerance: float = RATE_TOLERANCE,
) -> list[Quantizer]:
    """The configurations whose nominal rate is nearest to ``rate`` (the one rule of every family).

    Parameters
    ----------
    quantizers : sequence of Quantizer
        Candidates (a family's :meth:`Quantizer.candidates`).
    rate : float
        Target rate in bits per entry.
    n : int
        Row length at which the nominal rates are evaluated.
    tolerance : float
        Largest distance in bits per entry; nothing farther is picked.

    Returns
    -------
    list of Quantizer
        Every candidate at the smallest distance (ties are all kept: e.g. ``int:bits=3`` at 3.5
        and ``int:bits=4`` at 4.5 bits for a target of 4), or none within ``tolerance``.
    """
    dist = []
    for q in quantizers:
        r = q.nominal_rate(n)
        if r is not None and abs(r - rate) <= tolerance + 1e-9:
            dist.append((abs(r - rate), q))
    if not dist:
        return []
    best = min(d for d, _ in dist)
    return [q for d, q in dist if d <= best + 1e-9]


def get(spec: str | Quantizer, **overrides: Any) -> Quantizer:
    """Build a quantizer from a spec string such as ``"int:bits=4,group=32"``.

    Parameters
    ----------
    spec : str or Quantizer
        ``"name"`` or ``"name:key=value,..."``; a Quantizer is returned as is (with overrides).
    **overrides
        Parameters that replace those of the spec.

    Raises
    ------
    ValueError
        Unknown name (the message lists the available ones), unknown parameter, or a value out of
        range (raised by the quantizer's own validation).
    """
    if isinstance(spec, Quantizer):
        return dataclasses.replace(spec, **overrides) if overrides else spec  # type: ignore[type-var]
    name, raw = parse_spec(spec)
    reg = registry()
    if name not in reg:
        raise ValueError(f"unknown quantizer {name!r}; available: {', '.join(reg)}")
    cls = reg[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ValueError(
                f"unknown parameter {key!r} for quantizer {name!r}; "
                f"parameters: {', '.join(fields) or '(none)'}"
            )
        kwargs[key] = _convert(value, hints[key], key, spec)
    kwargs.update(overrides)
    return cls(**kwargs)
