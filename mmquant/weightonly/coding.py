"""Entropy coding of a matrix of integer codes with one cheap probability model per column.

The model of column ``j`` is a zero-mean Gaussian of standard deviation ``s_j`` integrated over the
unit cells ``[k − ½, k + ½)`` (``constriction``'s ``QuantizedGaussian`` on the pooled symbol range):
exactly the law of ``round(Y/c)`` when ``Y/c`` is ``N(0, s_j²)``, which is what WaterSIC and GPTQ
produce column by column. ``s_j`` is stored as one **uint8 per column** on a log grid,
``s = 2^{(k − 1)/16 − 3}`` (``k = 1..255``: 0.125 to 7.3e3, 4.4 % steps; the encoder picks the
``k`` of least code length), and ``k = 0`` marks a column of zeros that is not coded at all.
Side information: ``n`` bytes (the indices) plus 8 bytes (the pooled range as two int32), i.e.
``8/a`` bits per weight for ``a`` rows, instead of the 64 bits per column of a float32 mean and
standard deviation (``mmquant.entropy.encode_integers(model="gaussian")``), which would cost 0.17
bit/weight on a 384-row layer.

The bitstream is the rANS coder's output (32-bit words as little-endian bytes); columns are encoded
last to first so that they decode first to last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

__all__ = [
    "ColumnStream",
    "encode_columns",
    "decode_columns",
    "column_code_bits",
    "std_grid",
    "MAX_CODE_SPAN",
]

#: Largest ``max(Z) − min(Z)`` the coder takes: its models give every symbol of the pooled range
#: a nonzero probability at 24-bit precision (constriction refuses wider supports).
MAX_CODE_SPAN = 2**23

_K_OFFSET = 1
_K_PER_OCTAVE = 16.0
_LOG2_MIN = -3.0


def std_grid(k: np.ndarray) -> np.ndarray:
    """Standard deviation of model index ``k`` (1..255): ``2^{(k − 1)/16 − 3}``."""
    return np.exp2((np.asarray(k, np.float64) - _K_OFFSET) / _K_PER_OCTAVE + _LOG2_MIN)


def _k_of_std(s: np.ndarray) -> np.ndarray:
    k = np.rint((np.log2(np.maximum(s, 1e-9)) - _LOG2_MIN) * _K_PER_OCTAVE) + _K_OFFSET
    return np.clip(k, 1, 255).astype(np.int64)


@dataclass(frozen=True, eq=False)
class ColumnStream:
    """An entropy-coded ``a × n`` integer matrix with one Gaussian model per column.

    Attributes
    ----------
    stream : numpy.ndarray
        rANS bitstream, ``uint8``.
    std_index : numpy.ndarray
        ``(n,)`` ``uint8`` model index per column (0 = all-zero column, not coded).
    bounds : numpy.ndarray
        ``(2,)`` ``int32`` smallest and largest code (the support of every model).
    shape : tuple of int
        ``(a, n)``.
    """

    stream: np.ndarray
    std_index: np.ndarray
    bounds: np.ndarray
    shape: tuple[int, int]

    @property
    def side_nbytes(self) -> int:
        """Bytes of model parameters (indices and bounds)."""
        return int(self.std_index.nbytes + self.bounds.nbytes)

    @property
    def nbytes(self) -> int:
        """Bitstream plus model bytes."""
        return int(self.stream.nbytes) + self.side_nbytes


def _occurring(z: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(column, symbol − lo, count)`` of every symbol that occurs, sorted by column then symbol.

    A dense histogram per column when its ``n·(hi − lo + 1)`` counts are few (at most ``a·n``),
    else a sort of the codes (so that a wide code range never allocates more than the codes).
    Columns are taken a chunk at a time: the work arrays stay a fraction of ``z``.
    """
    a, n = z.shape
    width = hi - lo + 1
    cols: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    cnts: list[np.ndarray] = []
    step = max(1, (1 << 20) // max(a, width, 1))
    for c0 in range(0, n, step):
        zc = z[:, c0 : c0 + step]
        k = zc.shape[1]
        idx = (zc - lo) + width * np.arange(k)[None, :]
        if width <= a:
            hist = np.bincount(idx.reshape(-1), minlength=k * width).reshape(k, width)
            col, pos = np.nonzero(hist)
            cnt = hist[col, pos]
        else:
            keys, cnt = np.unique(idx.reshape(-1), return_counts=True)
            col, pos = keys // width, keys % width
        cols.append(col + c0)
        poss.append(pos)
        cnts.append(cnt)
    return np.concatenate(cols), np.concatenate(poss), np.concatenate(cnts)


def _cell_log2p(values: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``log2 P(v)`` of the quantized zero-mean Gaussian, elementwise over ``values``, ``std``."""
    p = ndtr((values + 0.5) / std) - ndtr((values - 0.5) / std)
    return np.log2(np.maximum(p, 2.0**-24))


def _choose_models(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Model index per column (least ideal code length) and that code length in bits per column."""
    z = np.asarray(z, np.int64)
    lo, hi = int(z.min()), int(z.max())
    n = z.shape[1]
    k = np.zeros(n, np.int64)
    bits = np.zeros(n)
    zero_col = ~np.any(z != 0, axis=0)
    if lo == hi:  # constant matrix: nothing to code, k marks the non-zero columns
        return np.where(zero_col, 0, 1).astype(np.int64), bits, lo, hi
    col, pos, cnt = _occurring(z, lo, hi)  # only the symbols that occur
    cnt = cnt.astype(np.float64)
    val = (pos + lo).astype(np.float64)
    var = np.bincount(col, cnt * val * val, minlength=n) / z.shape[0]
    k0 = _k_of_std(np.sqrt(np.maximum(var - 1.0 / 12.0, 1.0 / 64.0)))
    best = np.full(n, np.inf)
    for dk in (-2, -1, 0, 1, 2):
        kk = np.clip(k0 + dk, 1, 255)
        cost = -np.bincount(col, cnt * _cell_log2p(val, std_grid(kk)[col]), minlength=n)
        better = cost < best
        best = np.where(better, cost, best)
        k = np.where(better, kk, k)
    k[zero_col] = 0
    best[zero_col] = 0.0
    return k, best, lo, hi


def column_code_bits(z: np.ndarray) -> float:
    """Ideal code length of ``z`` (``a × n`` ints) under the chosen per-column models, in bits.

    Equals the bitstream length of :func:`encode_columns` up to the coder's ≤ 32-bit flush and its
    24-bit probability precision; side information is not included.
    """
    _, bits, _, _ = _choose_models(z)
    return float(bits.sum())


def _constriction():
    import constriction

    return constriction


def encode_columns(z: np.ndarray) -> ColumnStream:
    """Entropy-code an ``a × n`` integer matrix column by column (see the module docstring).

    Parameters
    ----------
    z : numpy.ndarray
        2-D integer array, values within ±2^30.

    Returns
    -------
    ColumnStream
    """
    z = np.asarray(z)
    if z.ndim != 2 or z.dtype.kind not in "iu":
        raise TypeError(f"z must be a 2-D integer array, got {z.dtype} with shape {z.shape}")
    if z.size == 0:
        raise ValueError("z is empty")
    z = np.asarray(z, np.int64)
    if int(np.abs(z).max()) > 2**30:
        raise ValueError("codes must lie within ±2^30")
    if int(z.max()) - int(z.min()) > MAX_CODE_SPAN:
        raise ValueError(
            f"codes span {int(z.max()) - int(z.min())} values; the per-column models code at "
            f"most {MAX_CODE_SPAN} (a larger step or rate is needed)"
        )
    k, _, lo, hi = _choose_models(z)
    c = _constriction()
    coder = c.stream.stack.AnsCoder()
    if lo != hi:
        for j in range(z.shape[1] - 1, -1, -1):
            if k[j] == 0:
                continue
            model = c.stream.model.QuantizedGaussian(lo, hi, 0.0, float(std_grid(k[j])))
            coder.encode_reverse(z[:, j].astype(np.int32), model)
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    return ColumnStream(
        stream=words.view(np.uint8).copy(),
        std_index=k.astype(np.uint8),
        bounds=np.array([lo, hi], np.int32),
        shape=(int(z.shape[0]), int(z.shape[1])),
    )


def check_vector_stream(
    cs: ColumnStream, what: str
) -> tuple[int, int, int, int, np.ndarray, np.ndarray]:
    """The checks shared by the vector column codes' decoders (E8, trellis) before any decoding.

    Returns ``(a, n, lo, hi, std_index as int64, stream bytes)``, or raises ``ValueError``
    naming the problem: bounds not ``lo < 0 < hi`` or more than :data:`MAX_CODE_SPAN` apart, a
    ``std_index`` of the wrong length, a stream that is not whole uint8 words, a non-empty stream
    for all-zero columns, or a coded stream that is empty or ends in a zero word (never an rANS
    stream). ``what`` names the code in the messages (``"E8"``, ``"trellis"``).
    """
    if not isinstance(cs, ColumnStream):
        raise TypeError(f"expected a ColumnStream, got {type(cs).__name__}")
    a, n = cs.shape
    lo, hi = int(cs.bounds[0]), int(cs.bounds[1])
    if not (lo < 0 < hi and hi - lo <= MAX_CODE_SPAN):
        raise ValueError(
            f"corrupt {what} symbol bounds [{lo}, {hi}]: expected lo < 0 < hi, at most "
            f"{MAX_CODE_SPAN} apart"
        )
    k = np.asarray(cs.std_index, np.int64)
    if k.size != n:
        raise ValueError(f"std_index has {k.size} entries for {n} columns")
    data = np.asarray(cs.stream)
    if data.dtype != np.uint8 or data.size % 4:
        raise ValueError("bitstream must be uint8 with a length multiple of 4")
    if not np.any(k):
        if data.size:
            raise ValueError("corrupt bitstream: every column is zero but the stream is not empty")
    elif data.size == 0 or not np.any(data[-4:]):
        raise ValueError("corrupt bitstream: empty or ending in a zero word (not an rANS stream)")
    return a, n, lo, hi, k, data


def decode_columns(cs: ColumnStream) -> np.ndarray:
    """Decode a :class:`ColumnStream` back to the ``int64`` matrix (exact inverse)."""
    if not isinstance(cs, ColumnStream):
        raise TypeError(f"expected a ColumnStream, got {type(cs).__name__}")
    a, n = cs.shape
    lo, hi = int(cs.bounds[0]), int(cs.bounds[1])
    if not (lo <= hi and hi - lo <= MAX_CODE_SPAN and max(-lo, hi) <= 2**30):
        raise ValueError(
            f"corrupt code bounds [{lo}, {hi}]: expected lo ≤ hi, at most {MAX_CODE_SPAN} "
            "apart, within ±2^30"
        )
    k = np.asarray(cs.std_index, np.int64)
    if k.size != n:
        raise ValueError(f"std_index has {k.size} entries for {n} columns")
    out = np.zeros((a, n), np.int64)
    if lo == hi:
        out[:, k != 0] = lo
        return out
    data = np.asarray(cs.stream)
    if data.dtype != np.uint8 or data.size % 4:
        raise ValueError("bitstream must be uint8 with a length multiple of 4")
    if data.size == 0:
        raise ValueError("corrupt bitstream: it is empty but the codes are not all equal")
    if not np.any(data[-4:]):
        raise ValueError("corrupt bitstream: an rANS stream never ends in a zero word")
    c = _constriction()
    try:
        dec = c.stream.stack.AnsCoder(data.view("<u4").astype(np.uint32))
        for j in range(n):
            if k[j] == 0:
                continue
            model = c.stream.model.QuantizedGaussian(lo, hi, 0.0, float(std_grid(k[j])))
            out[:, j] = dec.decode(model, a)
        left = not dec.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:  # constriction on a corrupt stream
        raise ValueError(f"corrupt bitstream: {exc}") from None
    if left:
        raise ValueError("corrupt bitstream: it holds more than the codes of its shape")
    return out
