"""Entropy-coded trellis-coded quantization ``tcqec`` (TCQ on the scaled integers, rANS-coded).

The reconstruction levels are the scaled integers ``Δ·i``, split into the four cosets
``D_c = {Δ·i : i ≡ c (mod 4)}``. A rate-1/2 convolutional code with ``2^L`` states (Ungerboeck's
one-dimensional codes, parity-check polynomials ``h0, h1`` of degree ``ν = L``, :data:`POLYS`)
labels every transition: with the window ``w`` of the last ``L + 1`` path bits (newest in bit 0),
``a = parity(w & h0)``, ``b = parity(w & h1)`` and the transition may use the levels of
``D_{2a+b}``. ``h1`` is even, so ``b`` depends only on the previous state: from one state, the two
branches together allow the levels ``i ≡ b (mod 2)``, and the transmitted symbol of a step is the
integer ``j = (i − b)/2`` (its parity is ``a``, which fixes the path bit ``u = a ⊕ parity((w ⊕ u) &
h0)``). This is Marcellin and Fischer's TCQ (1990) with an unbounded alphabet, i.e. Fischer and
Wang's entropy-coded TCQ (1992) with uniform thresholds.

The Viterbi search (:mod:`mmquant.trellis.viterbi`, kernels in :mod:`mmquant.kernels.trellis`) runs
on the windows (2^(L+1) trellis nodes, one path bit per entry) from window 0, with the free end;
the cost of a transition is the squared error to the nearest level of its coset. The symbols ``j``
of all rows are entropy-coded with one histogram model (:func:`mmquant.entropy.encode_integers`,
the model tables counted as side information). Rows are prepared as for ``tcq`` (rotation, RMS
normalisation; the stored row scale is the RMS times the row's least-squares gain).

The step Δ (float32 side information) is set for a target rate: from the high-rate value
``log2 Δ = ½·log2(2πe) − 1 − R`` (the levels of one branch pair are 2Δ apart), secant steps on
``log2 Δ`` until the plug-in entropy of the symbols of up to 32768 entries is within 0.002 bit of
the target. The measured rate (bytes of the stream and side information) is what counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from mmquant.core import Encoded, Quantizer, register
from mmquant.entropy import check_histograms, decode_integers, empirical_entropy, encode_integers
from mmquant.kernels import load
from mmquant.lattices.rows import finish_rows, prepare_rows, store_float
from mmquant.layout import MAX_ENTRIES_PER_BYTE, Layout, side_array
from mmquant.trellis import viterbi
from mmquant.trellis.quantizer import trellis_length
from mmquant.validation import check_float, check_int

__all__ = ["POLYS", "TCQEntropyCoded", "labels", "levels", "symbols"]

#: Parity-check polynomials (h0, h1) of Ungerboeck's rate-1/2 codes for one-dimensional signals,
#: by constraint length ν = L (octal in the literature: 5/2, 13/04, 23/04, 45/10, 103/024,
#: 235/126, 515/362, 1017/0362).
POLYS = {
    2: (0o5, 0o2),
    3: (0o13, 0o04),
    4: (0o23, 0o04),
    5: (0o45, 0o10),
    6: (0o103, 0o024),
    7: (0o235, 0o126),
    8: (0o515, 0o362),
    9: (0o1017, 0o0362),
}

#: Entries of the sample the step Δ is calibrated on.
CALIBRATION_ENTRIES = 32768
#: Entries searched and mapped to symbols at a time (bounds the encoder's transient memory).
CHUNK_ENTRIES = 1 << 16


def _parity(v: np.ndarray) -> np.ndarray:
    v = v.copy()
    out = np.zeros(v.shape, np.int64)
    while np.any(v):
        out ^= v & 1
        v >>= 1
    return out


@lru_cache(maxsize=16)
def labels(L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coset label ``2a + b`` of every window ``w < 2^(L+1)`` (uint8), and ``pa[w] =
    parity(w & h0)``, ``pb[w] = parity(w & h1)`` (int64) used by the decoder on ``w`` with bit 0
    clear."""
    h0, h1 = POLYS[L]
    w = np.arange(1 << (L + 1), dtype=np.int64)
    a, b = _parity(w & h0), _parity(w & h1)
    lab = (2 * a + b).astype(np.uint8)
    for arr in (lab, a, b):
        arr.setflags(write=False)
    return lab, a, b


def symbols(z: np.ndarray, u: np.ndarray, delta: np.float32, L: int) -> np.ndarray:
    """The symbols ``j`` (int64 (R, T)) of the paths ``u`` (bits, (R, T)) for the data ``z``:
    the index of the nearest level of each step's coset, as the Viterbi search computed it."""
    lab, _, pb = labels(L)
    R, T = u.shape
    w = np.zeros((R, T), np.int64)
    for i in range(L + 1):  # window: the last L + 1 bits (before the row: zeros)
        sh = np.zeros((R, T), np.int64)
        sh[:, i:] = u[:, : T - i]
        w |= sh << i
    c = lab[w].astype(np.float32)
    inv = np.float32(np.float32(1.0) / delta)
    y = z.astype(np.float32) * inv
    r = np.rint((y - c) * np.float32(0.25)).astype(np.int64)
    i = 4 * r + c.astype(np.int64)
    return (i - pb[w]) // 2


def levels(j: np.ndarray, L: int) -> np.ndarray:
    """Integer levels ``i`` (int64 (R, T)) of the symbols ``j``: the numpy reference decoder."""
    _, pa, pb = labels(L)
    R, T = j.shape
    mask = (1 << (L + 1)) - 1
    out = np.empty((R, T), np.int64)
    w = np.zeros(R, np.int64)
    for t in range(T):
        base = (w << 1) & mask
        b = pb[base]
        out[:, t] = 2 * j[:, t] + b
        w = base | ((j[:, t] & 1) ^ pa[base])
    return out


def _viterbi(z: np.ndarray, delta: np.float32, L: int) -> np.ndarray:
    lab = labels(L)[0]
    kern = load("trellis")
    if kern is None:
        return viterbi.viterbi_ec(z, lab, delta, L + 1)
    return kern.viterbi_ec(z, lab, delta, L + 1)


def _levels(j: np.ndarray, L: int) -> np.ndarray:
    kern = load("trellis")
    if kern is None:
        return levels(j, L)
    _, pa, pb = labels(L)
    return kern.decode_ec(j, pa, pb, L + 1)


@register("tcqec")
@dataclass(frozen=True)
class TCQEntropyCoded(Quantizer):
    """Entropy-coded trellis-coded quantizer (uniform levels, Ungerboeck trellis, rANS).

    Parameters
    ----------
    rate : float
        Target entropy of the symbols in bits per entry, 0.5 to 8 (the measured rate adds the
        model tables, Δ and the row scales).
    L : int
        Constraint length: ``2^L`` trellis states, 2 to 9.
    rotate : bool
        Seeded randomized Hadamard rotation of the rows.
    seed : int
        Seed of the rotation.
    """

    description: ClassVar[str] = "entropy-coded TCQ (Ungerboeck trellis, uniform levels, rANS)"

    rate: float = 4.0
    L: int = 8
    rotate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_float(self.rate, "rate", lo=0.5, hi=8.0)
        check_int(self.L, "L", lo=min(POLYS), hi=max(POLYS))
        check_int(self.seed, "seed", lo=0, hi=2**32 - 1)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """4 bits per entry, 2^8 states."""
        return [cls()]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """The configuration at ``rate`` (0.5 to 8)."""
        return [cls(rate=float(rate))] if 0.5 <= rate <= 8.0 else []

    def nominal_rate(self, n: int | None = None) -> float:
        """The target entropy ``rate`` (the measured rate adds the model and the row scales)."""
        return float(self.rate)

    def _rows(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        shape = x.shape
        blocks, side = prepare_rows(x, rotate=self.rotate, center=False, seed=self.seed)
        rows = math.prod(shape[:-1])
        n8 = -(-shape[-1] // 8) * 8
        z = np.zeros((rows, trellis_length(shape[-1], 1, self.L + 1)), np.float32)
        z[:, :n8] = blocks.reshape(rows, n8)
        return z, side

    def _calibrate(self, z: np.ndarray) -> np.float32:
        """Δ whose symbol entropy on the first rows (up to 32768 entries) is ``rate``."""
        sub = z[: max(1, CALIBRATION_ENTRIES // z.shape[1])]

        def h(logd: float) -> float:
            d = np.float32(2.0**logd)
            j = symbols(sub, _viterbi(sub, d, self.L), d, self.L)
            return empirical_entropy(j) - self.rate

        start = 0.5 * math.log2(2 * math.pi * math.e) - 1.0 - self.rate
        lo, hi = start - 4.0, start + 4.0
        l0 = start
        h0 = h(l0)
        l1 = min(max(l0 + h0, lo), hi)
        for _ in range(8):
            h1 = h(l1)
            if abs(h1) < 2e-3 or h1 == h0:
                break
            l0, h0, l1 = l1, h1, min(max(l1 - h1 * (l1 - l0) / (h1 - h0), lo), hi)
        return np.float32(2.0**l1)

    def _encode(self, x: np.ndarray) -> Encoded:
        shape = x.shape
        z, side = self._rows(x)
        delta = self._calibrate(z)
        # Rows in chunks (the search and the symbols are per row): the int64 windows of
        # :func:`symbols` and the float64 reconstruction exist for one chunk at a time.
        rows, T = z.shape
        step = max(1, CHUNK_ENTRIES // T)
        j = np.empty((rows, T), np.int32)
        alpha = np.empty(rows, np.float64)
        for r0 in range(0, rows, step):
            zc = z[r0 : r0 + step]
            jc = symbols(zc, _viterbi(zc, delta, self.L), delta, self.L)
            if int(jc.min()) < -(2**30) or int(jc.max()) > 2**30:
                raise ValueError("tcqec symbols must lie within ±2^30")
            j[r0 : r0 + step] = jc
            # the row gain α = ⟨z, ẑ⟩/‖ẑ‖² of the reconstruction, folded into the row scale
            zh = _levels(jc, self.L).astype(np.float64) * np.float64(delta)
            num = np.einsum("ij,ij->i", zc.astype(np.float64), zh)
            den = np.einsum("ij,ij->i", zh, zh)
            alpha[r0 : r0 + step] = np.where(
                den > 0, np.maximum(num, 0.0) / np.where(den > 0, den, 1.0), 0.0
            )
            del jc, zh
        table = int(j.max()) - int(j.min()) + 1
        if table > max(1 << 16, x.size):
            raise ValueError(
                f"tcqec would need a model table of {table} symbols for {x.size} entries"
            )
        side["norm"] = store_float(side["norm"].astype(np.float64) * alpha)
        coded = encode_integers(j)
        side["delta"] = np.array([delta], np.float32)
        for k, v in coded.side.items():
            side[f"model_{k}"] = v
        stats = {"entropy_bits_per_entry": empirical_entropy(j) * j.size / x.size}
        enc = Encoded(
            codes=coded.stream, side=side, shape=shape, spec=self.spec, seed=self.seed, stats=stats
        )
        if enc.entries > MAX_ENTRIES_PER_BYTE * enc.nbytes:
            raise ValueError(
                f"tcqec codes this input in {enc.nbytes} bytes for {enc.entries} entries, fewer "
                f"than one byte per {MAX_ENTRIES_PER_BYTE} entries: use a fixed-rate quantizer"
            )
        return enc

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """A bitstream of 32-bit words (any length; the decoder checks that it ends after the
        last symbol); side: ``norm`` float16 or float32 per row, ``delta`` one float32, the
        histogram model ``model_offset``, ``model_range`` (1 int32 each) and ``model_freq``
        (``range`` uint16). Seed: the spec's ``seed``."""
        rows = math.prod(shape[:-1])
        side = {
            "norm": side_array(("float16", "float32"), rows),
            "delta": side_array("float32", 1),
            "model_offset": side_array("int32", 1),
            "model_range": side_array("int32", 1),
            "model_freq": side_array("uint16", None),
        }
        return Layout((0, None), side, seed=self.seed, codes_multiple=4)

    def _check_stored(self, enc: Encoded) -> None:
        """The histogram model is valid and ``delta`` is a positive scale."""
        side = enc.side
        try:
            check_histograms(side["model_offset"], side["model_range"], side["model_freq"])
        except ValueError as exc:
            raise ValueError(f"corrupt entropy-coded stream or side information: {exc}") from None
        delta = float(side["delta"][0])
        if not (np.isfinite(delta) and delta > 0):
            raise ValueError(f"corrupt side information: 'delta' must be positive, got {delta}")

    def _decode(self, enc: Encoded) -> np.ndarray:
        shape = enc.shape
        rows = math.prod(shape[:-1])
        T = trellis_length(shape[-1], 1, self.L + 1)
        n8 = -(-shape[-1] // 8) * 8
        model = {k[6:]: v for k, v in enc.side.items() if k.startswith("model_")}
        j = decode_integers(enc.codes, model, (rows, T))
        delta = np.float64(enc.side["delta"][0])
        zh = np.empty((rows, n8), np.float64)
        step = max(1, CHUNK_ENTRIES // T)
        for r0 in range(0, rows, step):  # the int64 levels of one chunk at a time
            zh[r0 : r0 + step] = _levels(j[r0 : r0 + step], self.L)[:, :n8] * delta
        del j
        return finish_rows(
            zh.reshape(-1, 8), enc.side, shape, rotate=self.rotate, center=False, seed=self.seed
        )
