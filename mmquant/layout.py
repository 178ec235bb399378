"""What a record of each quantizer holds, and the checks a record passes before it is decoded.

Every :class:`~mmquant.core.Encoded` record is treated as hostile: it may come from a file somebody
made. Before any decoder (and so any kernel that indexes a buffer) runs,
:meth:`mmquant.core.Quantizer.check` verifies

1. the **shape**: a tuple of 1 to :data:`MAX_NDIM` positive integers (its product is computed
   exactly, in Python integers);
2. the **size rule**: a record stores at least one byte per :data:`MAX_ENTRIES_PER_BYTE` entries,
   ``entries ≤ 1024 · max(nbytes, 1)``. Decoding allocates memory in proportion to the entries of
   the output, so this bounds what a small file can make the decoder allocate (a few hundred bytes
   of decode memory per stored byte), also for the entropy-coded codes, whose bitstream length is
   not fixed by the shape (an rANS decoder reads any number of symbols from any stream). Every
   encoder of the library writes at least 1/128 bit per entry, far from the limit except on
   degenerate data (those encoders refuse such inputs with the reason);
3. the **layout** the family declares for that shape (:meth:`~mmquant.core.Quantizer.layout`):
   the exact number of code bytes (or, where it depends on stored values or on the data, a range
   that the decoder narrows to an exact check itself), the exact set of side arrays with the
   dtype(s) and shape of each as functions of the shape and the parameters (some may be declared
   optional: stored only when the data needs them), and the seed the
   record must carry (the decoder uses the spec's seed; a record with another one was made with
   another rotation or dither).

Checks of stored *values* (indices below the number of scales, codebook sizes, scale codes that
are not NaN ...) are the decoder's own; they run before any kernel too. Finally ``decode`` checks
that the reconstruction has the record's shape and is finite.

**Side-information keys keep one meaning each** (:data:`SIDE_KEYS` lists those of the scaled
scalar formats). Files of format version 3 and older stored the first four under one name,
``scale``; :data:`LEGACY_SIDE_KEYS` says what each family's old names are now, and
:func:`rename_legacy_side` translates a record read from such a file (:mod:`mmquant.io`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mmquant.core import Encoded

__all__ = [
    "MAX_NDIM",
    "MAX_ENTRIES_PER_BYTE",
    "SideArray",
    "Layout",
    "side_array",
    "check_shape",
    "check_size",
    "check_layout",
    "SIDE_KEYS",
    "LEGACY_SIDE_KEYS",
    "LEGACY_SIDE_VERSION",
    "rename_legacy_side",
]

#: Most dimensions a record's shape may have (numpy's own limit is 32 or 64).
MAX_NDIM = 32
#: Most entries a record may claim per stored byte (codes + side information): 1/128 bit/entry.
MAX_ENTRIES_PER_BYTE = 1024


#: Side arrays of the block formats (:mod:`mmquant.formats.scales`): key -> meaning.
SIDE_KEYS: dict[str, str] = {
    "absmax": "float16|float32 scale from the group's absmax, x̂ = s·element (int, fp, nf4)",
    "step": "float16|float32 step of an affine grid, x̂ = offset + step·code (int:affine=true)",
    "offset": "float16|float32 group minimum of an affine grid (int:affine=true)",
    "e8m0": "uint8 biased exponent E + 127 of the MX block scale 2^E (mxfp4/6/8, mxint8)",
    "block_scale": "uint8 E4M3 code of an NVFP4 block scale (times tensor_scale)",
    "tensor_scale": "float32 tensor scale of NVFP4",
    "rms": "float16|float32 RMS of a row, x̂ = σ·point (compander, lloydmax, uniform, ...)",
    "points": "float32 codebook stored in the record (datacompander)",
}

#: Side keys renamed since format version 3: family -> {old key: new key, or the candidates of
#: which the record's layout declares exactly one}. Files of versions ≤ 3 are translated on
#: reading (:func:`rename_legacy_side`); their bytes are unchanged.
LEGACY_SIDE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "int": {"scale": ("absmax", "step")},  # "step" with affine=true
    "fp": {"scale": ("absmax",)},
    "nf4": {"scale": ("absmax",)},
    "mxfp4": {"scale": ("e8m0",)},
    "mxfp6": {"scale": ("e8m0",)},
    "mxfp8": {"scale": ("e8m0",)},
    "mxint8": {"scale": ("e8m0",)},
    "compander": {"scale": ("rms",)},
    "lloydmax": {"scale": ("rms",)},
    "uniform": {"scale": ("rms",)},
    "datacompander": {"scale": ("rms",)},
}
#: The last format version whose files use the old keys of :data:`LEGACY_SIDE_KEYS`.
LEGACY_SIDE_VERSION = 3


def rename_legacy_side(family: str, side: Mapping[str, Any], declared: Any) -> dict[str, Any]:
    """Side arrays of an old record under today's keys (:data:`LEGACY_SIDE_KEYS`).

    Parameters
    ----------
    family : str
        The record's quantizer family (the spec's name).
    side : mapping
        Side arrays as stored.
    declared : collection of str
        The keys today's layout declares for the record (picks among several candidates).

    Returns
    -------
    dict
        The same arrays, renamed; keys with no rename are kept (the layout check judges them).
    """
    renames = LEGACY_SIDE_KEYS.get(family, {})
    out: dict[str, Any] = {}
    for key, arr in side.items():
        new = [k for k in renames.get(key, ()) if k in declared]
        out[new[0] if len(new) == 1 else key] = arr
    return out


def _dtype_str(dts: tuple[np.dtype, ...]) -> str:
    return "|".join(str(d) for d in dts)


@dataclass(frozen=True)
class SideArray:
    """Declared dtype(s) and shape of one side-information array.

    Attributes
    ----------
    dtypes : tuple of numpy.dtype
        Accepted dtypes (usually one; e.g. ``float16`` or ``float32`` where the encoder picks the
        narrower one that holds the values).
    shape : tuple of int or None
        Exact shape; ``None`` along an axis means "any length", which the decoder then checks
        against stored values (e.g. the concatenated histogram tables of an entropy coder).
    """

    dtypes: tuple[np.dtype, ...]
    shape: tuple[int | None, ...]

    def matches(self, arr: np.ndarray) -> bool:
        """Whether ``arr`` has one of the dtypes and the shape."""
        if arr.dtype not in self.dtypes or arr.ndim != len(self.shape):
            return False
        return all(want is None or got == want for got, want in zip(arr.shape, self.shape))

    def describe(self) -> str:
        """``"float16|float32 (8, 2)"`` (``?`` for a free axis)."""
        dims = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"{_dtype_str(self.dtypes)} ({dims}{',' if len(self.shape) == 1 else ''})"


def side_array(dtypes: str | tuple[str, ...], *shape: int | None) -> SideArray:
    """Shorthand: ``side_array("float16", rows, groups)``, ``side_array(("float16", "float32"), n)``."""
    names = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    return SideArray(tuple(np.dtype(d) for d in names), tuple(shape))


@dataclass(frozen=True)
class Layout:
    """What a record of one quantizer holds for one shape.

    Attributes
    ----------
    codes : int or (int, int or None)
        Exact number of code bytes, or an inclusive range ``(lo, hi)`` (``hi = None``: no upper
        bound) when the length depends on stored values or on the data; the decoder then checks
        that it consumes the codes exactly.
    side : mapping of str to SideArray
        Every side array, by name: no other may be present, none may be missing.
    seed : int or None
        The seed the record must carry (``None``: the record has no seed).
    codes_multiple : int
        The code length is a multiple of this (4 for a stream of 32-bit words).
    optional : frozenset of str
        Names in ``side`` that a record may omit (stored only when the data needs them, e.g. a
        mask of dead inputs); when present they must match their declaration.
    """

    codes: int | tuple[int, int | None]
    side: Mapping[str, SideArray] = field(default_factory=dict)
    seed: int | None = None
    codes_multiple: int = 1
    optional: frozenset[str] = frozenset()

    def describe_codes(self) -> str:
        """``"exactly 256 bytes"`` or ``"between 0 and 120 bytes"`` (and the multiple)."""
        if isinstance(self.codes, int):
            text = f"exactly {self.codes} bytes"
        else:
            lo, hi = self.codes
            if hi is None:
                text = "any number of bytes" if lo == 0 else f"at least {lo} bytes"
            else:
                text = f"between {lo} and {hi} bytes"
        if self.codes_multiple > 1:
            text += f", a multiple of {self.codes_multiple}"
        return text

    def codes_ok(self, n: int) -> bool:
        """Whether ``n`` code bytes fit the declaration."""
        if n % self.codes_multiple:
            return False
        if isinstance(self.codes, int):
            return n == self.codes
        lo, hi = self.codes
        return n >= lo and (hi is None or n <= hi)


def check_shape(shape: Any, what: str = "record") -> int:
    """Check a record's shape and return its number of entries (an exact Python integer).

    Raises
    ------
    ValueError
        Not a tuple of 1..:data:`MAX_NDIM` positive integers.
    """
    if not isinstance(shape, tuple) or not 1 <= len(shape) <= MAX_NDIM:
        raise ValueError(f"{what} shape {shape!r} is invalid: expected 1 to {MAX_NDIM} dimensions")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(
                f"{what} shape {shape!r} is invalid: every dimension must be a positive integer"
            )
    return math.prod(int(s) for s in shape)


def check_size(entries: int, nbytes: int, what: str = "record") -> None:
    """The size rule: at most :data:`MAX_ENTRIES_PER_BYTE` entries per stored byte."""
    if entries > MAX_ENTRIES_PER_BYTE * max(int(nbytes), 1):
        raise ValueError(
            f"{what} claims {entries} entries but stores only {nbytes} bytes: more than "
            f"{MAX_ENTRIES_PER_BYTE} entries per stored byte is refused (decoding would allocate "
            "memory out of proportion to the record)"
        )


def check_layout(enc: Encoded, layout: Layout, spec: str, what: str = "record") -> None:
    """Check ``enc`` against the declared ``layout`` of ``spec``; ValueError naming what differs."""
    shape = tuple(enc.shape)
    n = int(enc.codes.size)
    if not layout.codes_ok(n):
        raise ValueError(
            f"{what} codes hold {n} bytes; {spec!r} stores {layout.describe_codes()} "
            f"for shape {shape}"
        )
    got, want = set(enc.side), set(layout.side)
    required = want - set(layout.optional)
    if not required <= got <= want:
        parts = []
        if required - got:
            parts.append(f"missing {', '.join(repr(k) for k in sorted(required - got))}")
        if got - want:
            parts.append(f"unexpected {', '.join(repr(k) for k in sorted(got - want))}")
        expected = ", ".join(repr(k) for k in sorted(want)) or "none"
        raise ValueError(
            f"{what} side information does not match {spec!r}: {'; '.join(parts)} "
            f"(expected: {expected})"
        )
    for key in sorted(got):
        arr, decl = enc.side[key], layout.side[key]
        if not decl.matches(arr):
            raise ValueError(
                f"{what} side array {key!r} is {arr.dtype} {tuple(arr.shape)}; {spec!r} stores "
                f"{decl.describe()} for shape {shape}"
            )
    if enc.seed != layout.seed:
        raise ValueError(
            f"{what} seed {enc.seed!r} differs from the seed {layout.seed!r} of its spec "
            f"{spec!r} (the decoder uses the spec's seed)"
        )
