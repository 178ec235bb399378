"""Column codes: how one column of the SIC loop is quantized to codes and how codes are stored.

A column code quantizes the residual target of one column (a vector of ``a`` entries, in units of
the column's step) to integer codes and their *points* (the reconstruction in step units), and
entropy codes the ``(a, m)`` matrix of codes with one model index per column. The SIC loop
(:func:`mmquant.weightonly.vsic.vector_sic`) is the same for every code; the stored matrix is
``Ŵ'_rj = unit · col_scale_j · points(Z)_rj`` (:mod:`~mmquant.weightonly.result`).

Registered codes (:data:`COLUMN_CODES`, the record's coding name):

``"entropy"``
    the scalar grid Z (WaterSIC's rounding), :mod:`~mmquant.weightonly.coding`;
``"e8"``
    the E8 lattice in blocks of 8 entries, :mod:`~mmquant.weightonly.e8coding`;
``"tcq<L>"`` (``tcq8``)
    entropy-coded TCQ along the column on a ``2^L``-state trellis,
    :mod:`~mmquant.weightonly.tcqcoding`.

A new code (e.g. a trellis code with a per-column rate) implements :class:`ColumnCode` and adds
itself to :data:`COLUMN_CODES`; the registered family, the stored format and the decoder then
follow through :func:`column_code`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mmquant.weightonly.coding import ColumnStream, column_code_bits, decode_columns, encode_columns

__all__ = ["ColumnCode", "ScalarCode", "E8Code", "TCQCode", "COLUMN_CODES", "column_code"]


class ColumnCode(Protocol):
    """What the vector SIC loop and the stored format need from a column code."""

    #: Coding name stored with the record (``WeightQuant.coding``).
    name: str
    #: Normalised second moment of the code's cells (1/12 for Z, 0.0717 for E8): the error
    #: power per entry at step 1, high-rate.
    nsm: float

    def quantize(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(codes int64 (a,), points float64 (a,))`` of one column target ``t`` (step units)."""
        ...

    def points(self, z: np.ndarray) -> np.ndarray:
        """Reconstruction (step units, float64) of a matrix of codes (the decoder's map)."""
        ...

    def code_bits(self, z: np.ndarray) -> float:
        """Ideal code length of an ``(a, m)`` code matrix, in bits (the rate search's measure)."""
        ...

    def encode(self, z: np.ndarray) -> ColumnStream:
        """Bitstream and per-column model indices of an ``(a, n)`` code matrix."""
        ...

    def decode(self, cs: ColumnStream) -> np.ndarray:
        """Exact inverse of :meth:`encode` (refuses a corrupt stream with ``ValueError``)."""
        ...


@dataclass(frozen=True)
class ScalarCode:
    """The integers Z: ``z = round(t)`` (ties to even), entropy coded per column (WaterSIC's)."""

    name: str = "entropy"
    nsm: float = 1.0 / 12.0

    def quantize(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.rint(np.asarray(t, np.float64))
        return p.astype(np.int64), p

    def points(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64)

    def code_bits(self, z: np.ndarray) -> float:
        return column_code_bits(z)

    def encode(self, z: np.ndarray) -> ColumnStream:
        return encode_columns(z)

    def decode(self, cs: ColumnStream) -> np.ndarray:
        return decode_columns(cs)


@dataclass(frozen=True)
class E8Code:
    """E8 in blocks of 8 entries (Z for the ``a mod 8`` last ones); codes are ``2λ``."""

    name: str = "e8"
    nsm: float = 929.0 / 12960.0

    def quantize(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from mmquant.weightonly.e8coding import quantize_e8_column

        z = quantize_e8_column(t)
        return z, 0.5 * z.astype(np.float64)

    def points(self, z: np.ndarray) -> np.ndarray:
        return 0.5 * np.asarray(z, np.float64)

    def code_bits(self, z: np.ndarray) -> float:
        from mmquant.weightonly.e8coding import e8_column_bits

        return e8_column_bits(z)

    def encode(self, z: np.ndarray) -> ColumnStream:
        from mmquant.weightonly.e8coding import encode_e8_columns

        return encode_e8_columns(z)

    def decode(self, cs: ColumnStream) -> np.ndarray:
        from mmquant.weightonly.e8coding import decode_e8_columns

        return decode_e8_columns(cs)


@dataclass(frozen=True)
class TCQCode:
    """Entropy-coded TCQ along the column (``2^L`` states); codes are the levels ``i``, points
    ``i/2`` (:mod:`~mmquant.weightonly.tcqcoding`)."""

    L: int = 8
    name: str = field(init=False)
    nsm: float = field(init=False)

    def __post_init__(self) -> None:
        from mmquant.weightonly.tcqcoding import TCQ_NSM

        if self.L not in TCQ_NSM:
            raise ValueError(f"L must be one of {sorted(TCQ_NSM)}, got {self.L!r}")
        object.__setattr__(self, "name", f"tcq{self.L}")
        object.__setattr__(self, "nsm", TCQ_NSM[self.L])

    def quantize(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from mmquant.weightonly.tcqcoding import quantize_tcq_column

        z = quantize_tcq_column(t, self.L)
        return z, 0.5 * z.astype(np.float64)

    def points(self, z: np.ndarray) -> np.ndarray:
        return 0.5 * np.asarray(z, np.float64)

    def code_bits(self, z: np.ndarray) -> float:
        from mmquant.weightonly.tcqcoding import tcq_column_bits

        return tcq_column_bits(z)

    def encode(self, z: np.ndarray) -> ColumnStream:
        from mmquant.weightonly.tcqcoding import encode_tcq_columns

        return encode_tcq_columns(z, self.L)

    def decode(self, cs: ColumnStream) -> np.ndarray:
        from mmquant.weightonly.tcqcoding import decode_tcq_columns

        return decode_tcq_columns(cs, self.L)


#: Column codes by coding name.
COLUMN_CODES: dict[str, ColumnCode] = {"entropy": ScalarCode(), "e8": E8Code()}
COLUMN_CODES.update({f"tcq{L}": TCQCode(L) for L in range(2, 10)})  # trellis POLYS' lengths


def column_code(name: str) -> ColumnCode:
    """The column code of a coding name (``ValueError`` naming the known ones otherwise)."""
    if name not in COLUMN_CODES:
        raise ValueError(f"unknown column code {name!r}; known: {sorted(COLUMN_CODES)}")
    return COLUMN_CODES[name]
