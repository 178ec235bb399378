"""The fixed-rate trellis-coded quantizer ``tcq`` (bitshift trellis, tail-biting, k bits per entry).

Along the last axis of ``x`` (one row = one column of the product's ``A``):

1. the row preparation of the lattice codes (:func:`mmquant.lattices.voronoi.prepare_rows`): a
   seeded randomized Hadamard rotation, zero padding to a multiple of 8 entries, division by the
   row RMS; rows shorter than ``⌈L/k⌉`` entries are padded further with zeros (to a multiple of 8)
   so that the row's bitstream holds at least L bits;
2. the row, ``T`` entries = ``S = T/V`` steps of ``V`` entries, is coded by the tail-biting
   Viterbi search of :mod:`mmquant.trellis.viterbi` on the trellis with ``2^L`` states, ``kV``
   new bits per step and reconstruction ``code(state)`` (:mod:`mmquant.trellis.codes`);
3. with ``mmse`` (the default) the stored row scale is the RMS times the least-squares gain
   ``α = ⟨z, ẑ⟩/‖ẑ‖²`` of the row's reconstruction (clamped at 0), so the side information is
   still one float16 (float32 when float16 cannot hold it) per row.

Codes: the ``S`` symbols of ``kV`` bits of every row, rows one after the other, packed by
:func:`mmquant.packing.pack` (``kV·⌈R·S/8⌉`` bytes for R rows: exactly ``k`` bits per entry of the
padded rows, plus at most ``kV − 1`` bytes of padding in all). The decoder is a pure function of
an L-bit window: ``s_{−1}`` is the window that ends with the row's last symbol (tail-biting), then
``s_t = ((s_{t−1} << kV) | u_t) mod 2^L`` and the step's V entries are ``code(s_t)``.

Decode: one fused pass per row (:func:`decode_rows`, the kernel
:func:`mmquant.kernels.trellis.decode_full`, rows split between the threads): the symbols are read
from the packed bytes, decoded, multiplied by the row scale in float64 and rotated back in place
(:mod:`mmquant.lattices.inverse`): the same float64 operations as the lattice codes' unfused
:func:`~mmquant.lattices.rows.finish_rows`, so the same values.

Encode cost: two Viterbi passes (the junction pass is short) of about ``3·2^L`` float32 operations
per step, plus memory ``2^(L−kV)`` bytes of back-pointers per step of a row (bounded by segments
in the numba kernel, :mod:`mmquant.kernels.trellis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.kernels import load
from mmquant.lattices.inverse import InverseProgram, inverse_program, inverse_rows
from mmquant.lattices.rows import prepare_rows, store_float
from mmquant.layout import Layout, side_array
from mmquant.packing import check_padding, pack, packed_nbytes, unpack
from mmquant.trellis import viterbi
from mmquant.trellis.codes import CODES, code_table
from mmquant.validation import check_choice, check_int

__all__ = [
    "COMPARE_L",
    "TrellisCoded",
    "L_MAX",
    "decode_rows",
    "decode_symbols",
    "encode_rows",
    "trellis_length",
]

#: Largest number of state bits (2^16 states: about 0.2 M float32 operations per step).
L_MAX = 16
#: State bits of the configurations ``mmquant compare`` runs (:meth:`TrellisCoded.variants`).
COMPARE_L = 16


def trellis_length(n: int, k: int, L: int) -> int:
    """Entries ``T`` of a coded row of length ``n``: ``n`` rounded up to a multiple of 8, and to
    at least ``L/k`` entries (the bitstream of a row must hold one state)."""
    return max(-(-n // 8) * 8, 8 * -(-L // (8 * k)))


def decode_symbols(u: np.ndarray, table: np.ndarray, L: int, kV: int) -> np.ndarray:
    """Reconstruction (float32 (R, S·V)) of the symbols ``u`` (R, S): the numpy reference.

    The state of step t is the window of the last L bits, read circularly in the row:
    ``s_t = Σ_i u_{t−i} << (i·kV)`` over the ``⌈L/kV⌉`` last symbols, mod 2^L.
    """
    R, S = u.shape
    V = table.shape[0]
    s = np.zeros((R, S), np.int64)
    for i in range(-(-L // kV)):
        s |= np.roll(u, i, axis=1).astype(np.int64) << (i * kV)
    s &= (1 << L) - 1
    return np.ascontiguousarray(table.T[s].reshape(R, S * V))


def encode_rows(z: np.ndarray, table: np.ndarray, L: int, kV: int) -> np.ndarray:
    """Tail-biting Viterbi of every row (float32 (R, T)): symbols uint8 (R, T/V), on the backend
    :func:`mmquant.kernels.resolve` picks (the kernel and the reference give the same symbols)."""
    kern = load("trellis")
    if kern is None:
        return viterbi.viterbi_fixed(z, table, L, kV)
    return kern.viterbi_fixed(z, table, L, kV)


def _decode_rows(u: np.ndarray, table: np.ndarray, L: int, kV: int) -> np.ndarray:
    kern = load("trellis")
    if kern is None:
        return decode_symbols(u, table, L, kV)
    return kern.decode_fixed(u, table, L, kV)


def decode_rows(
    codes: np.ndarray,
    shape: tuple[int, int],
    S: int,
    table: np.ndarray,
    L: int,
    kV: int,
    norm: np.ndarray,
    prog: InverseProgram | None,
) -> np.ndarray:
    """The whole decoder (float64 (R, n)): numpy reference of the fused kernel
    (:func:`mmquant.kernels.trellis.decode_full`), and the same bits.

    The R rows of S symbols are unpacked from ``codes``, decoded (:func:`decode_symbols`), cut to
    their first n entries, converted to float64, multiplied by their scale ``norm`` (float64
    (R,)) and, with ``prog``, rotated back (:func:`mmquant.lattices.inverse.inverse_rows`).
    """
    R, n = shape
    u = unpack(codes, kV, R * S).reshape(R, S)
    y = decode_symbols(u, table, L, kV)[:, :n].astype(np.float64) * norm[:, None]
    return y if prog is None else inverse_rows(y, prog)


def _decode_full(
    codes: np.ndarray,
    shape: tuple[int, int],
    S: int,
    table: np.ndarray,
    L: int,
    kV: int,
    norm: np.ndarray,
    prog: InverseProgram | None,
) -> np.ndarray:
    kern = load("trellis")
    if kern is None:
        return decode_rows(codes, shape, S, table, L, kV, norm, prog)
    return kern.decode_full(codes, shape, S, table, L, kV, norm, prog)


@register("tcq")
@dataclass(frozen=True)
class TrellisCoded(Quantizer):
    """Bitshift trellis-coded quantizer at a fixed rate of ``bits`` bits per entry.

    Parameters
    ----------
    bits : int
        Bits per entry ``k``, 1 to 8 (``k·V ≤ 8``).
    L : int
        State bits: ``2^L`` states, ``k·V < L ≤`` :data:`L_MAX`.
    V : int
        Entries per trellis step, 1 or 2.
    code : {"1mad", "3inst", "strat", "lut", "tstrat"}
        Reconstruction code of a state (:mod:`mmquant.trellis.codes`).
    mmse : bool
        Store the row scale times the row's least-squares gain (see the module docstring).
    rotate : bool
        Seeded randomized Hadamard rotation of the rows.
    seed : int
        Seed of the rotation.
    """

    description: ClassVar[str] = "bitshift trellis-coded quantizer (Viterbi, tail-biting), Hadamard"

    bits: int = 4
    L: int = 12
    V: int = 1
    code: str = "1mad"
    mmse: bool = True
    rotate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.bits, "bits", lo=1, hi=8)
        check_int(self.V, "V", lo=1, hi=2)
        check_int(self.bits * self.V, "bits·V", lo=1, hi=8)
        check_int(self.L, "L", lo=self.bits * self.V + 1, hi=L_MAX)
        check_choice(self.code, "code", CODES)
        check_int(self.seed, "seed", lo=0, hi=2**32 - 1)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """:data:`COMPARE_L` = 16 state bits with the stratified code at 4 bits: the largest L
        that keeps ``mmquant compare`` under 90 s on a 2-core machine (about 33 CPU seconds of
        encoding on its 2 × 4096 × 256 entries)."""
        return [cls(bits=4, L=COMPARE_L, code="strat")]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """The same trellis at 1 to 7 bits per entry."""
        return [cls(bits=b, L=COMPARE_L, code="strat") for b in range(1, 8)]

    def nominal_rate(self, n: int | None = None) -> float:
        """``bits`` plus the float16 row scale over ``n``."""
        return self.bits + (16 / n if n else 0.0)

    @property
    def kv(self) -> int:
        """Bits per trellis step."""
        return self.bits * self.V

    def table(self) -> np.ndarray:
        """The code's reconstruction table (float32 (V, 2^L))."""
        return code_table(self.code, self.L, self.V, self.bits)

    def _steps(self, shape: tuple[int, ...]) -> tuple[int, int]:
        rows = math.prod(shape[:-1])
        return rows, trellis_length(shape[-1], self.bits, self.L) // self.V

    def _encode(self, x: np.ndarray) -> Encoded:
        shape = x.shape
        blocks, side = prepare_rows(x, rotate=self.rotate, center=False, seed=self.seed)
        rows, S = self._steps(shape)
        n8 = -(-shape[-1] // 8) * 8
        T = S * self.V
        z = np.zeros((rows, T), np.float32)
        z[:, :n8] = blocks.reshape(rows, n8)
        del blocks
        table = self.table()
        u = encode_rows(z, table, self.L, self.kv)
        if self.mmse:
            zh = _decode_rows(u, table, self.L, self.kv).astype(np.float64)
            num = np.einsum("ij,ij->i", z.astype(np.float64), zh)
            den = np.einsum("ij,ij->i", zh, zh)
            alpha = np.where(den > 0, np.maximum(num, 0.0) / np.where(den > 0, den, 1.0), 0.0)
            side["norm"] = store_float(side["norm"].astype(np.float64) * alpha)
        codes = pack(u.reshape(-1), self.kv)
        return Encoded(codes=codes, side=side, shape=shape, spec=self.spec, seed=self.seed)

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """``k·V·⌈R·S/8⌉`` code bytes (R rows of S steps); side: ``norm``, float16 or float32 per
        row. Seed: the spec's ``seed``."""
        rows, S = self._steps(shape)
        side = {"norm": side_array(("float16", "float32"), rows)}
        return Layout(packed_nbytes(rows * S, self.kv), side, seed=self.seed)

    def _check_stored(self, enc: Encoded) -> None:
        """The padding bits after the last symbol are zero."""
        rows, S = self._steps(enc.shape)
        check_padding(enc.codes, self.kv, rows * S)

    def _decode(self, enc: Encoded) -> np.ndarray:
        shape = enc.shape
        rows, S = self._steps(shape)
        n = shape[-1]
        norm = enc.side["norm"]
        if norm.size and not (np.all(np.isfinite(norm)) and float(np.min(norm)) >= 0):
            raise ValueError("corrupt side information: 'norm' holds a negative or non-finite RMS")
        prog = inverse_program(n, self.seed) if self.rotate else None
        out = _decode_full(
            enc.codes, (rows, n), S, self.table(), self.L, self.kv, norm.astype(np.float64), prog
        )
        return out.reshape(shape)
