"""Packing of a Voronoi code's indices into bytes: base-q digits, and union codes.

Base-q digits (:func:`pack_base_q`): with ``q = 2^a·m`` (m odd) each base-q digit is ``a`` raw
bits and one base-m digit; J base-m digits form one integer ``< m^J ≤ 2^64`` stored in
``W = ⌈J·log2 m⌉`` bits (J chosen to minimise W/J), so a digit costs ``a + W/J`` bits
(:func:`digit_bits`; q = 14: 1 + 59/21 = 3.8095, i.e. log2 14 + 0.002).

Union codes (:func:`pack_union`): when every scale j has its own code size q_j, the k codes form
one codebook of ``Σ q_j^8`` points and each block is sent as one index in ``[0, Σ q_j^8)``
(within 0.1 bit per block of ``log2 Σ q_j^8``); the scale index costs no separate bits.

Scale indices sent block by block are plain ``⌈log2 k⌉``-bit fields (:func:`mmquant.packing.pack`),
in groups they are ranks (:mod:`mmquant.lattices.grouping`); which of these a code uses is decided
by its index coder (:mod:`mmquant.lattices.indexcoders`).
"""

from __future__ import annotations

import numpy as np

from mmquant.packing import (
    pack,
    pack_wide,
    packed_nbytes,
    packed_wide_nbytes,
    unpack,
    unpack_wide,
)

__all__ = [
    "PACK_CHUNK",
    "UNION_MAX",
    "digit_bits",
    "pack_base_q",
    "unpack_base_q",
    "base_q_nbytes",
    "union_size",
    "union_bits",
    "pack_union",
    "unpack_union",
    "union_nbytes",
]


def _word_params(m: int) -> tuple[int, int]:
    """(J, W): J base-m symbols per W-bit word (one integer ``< m^J ≤ 2^64``).

    J minimises ``W/J`` with ``W = ⌈log2 m^J⌉`` (computed exactly as the bit length of
    ``m^J − 1``), the smallest such J on ties. m = 7: J = 21, W = 59.
    """
    if m == 1:
        return 1, 0
    best = (1, (m - 1).bit_length())
    j = 1
    while m ** (j + 1) <= 2**64:
        j += 1
        w = (m**j - 1).bit_length()
        if w * best[0] < best[1] * j:
            best = (j, w)
    return best


def _pack_params(q: int) -> tuple[int, int, int, int]:
    """(a, m, J, W) for q = 2^a·m with m odd, J base-m parts per W-bit word (:func:`_word_params`)."""
    a = (q & -q).bit_length() - 1
    m = q >> a
    return (a, m, *_word_params(m))


def _pack_words(h: np.ndarray, m: int, j: int, w: int) -> list[np.ndarray]:
    """Base-m symbols h (uint64 < m) in words of j by Horner's rule, w bits each."""
    n_words = -(-h.size // j)
    p = np.zeros(n_words * j, np.uint64)
    p[: h.size] = h
    p = p.reshape(n_words, j)
    val = np.zeros(n_words, np.uint64)
    mm = np.uint64(m)
    for i in range(j - 1, -1, -1):  # exact: val < m^J ≤ 2^64
        val = val * mm + p[:, i]
    return [pack_wide(val, w)]


def _unpack_words(
    data: np.ndarray, pos: int, n: int, m: int, j: int, w: int
) -> tuple[np.ndarray, int]:
    """Inverse of :func:`_pack_words`: (n uint64 base-m symbols, new position)."""
    n_words = -(-n // j)
    val, used = unpack_wide(data[pos:], w, n_words)
    pos += used
    h = np.empty((n_words, j), np.uint64)
    mm = np.uint64(m)
    for i in range(j):
        h[:, i] = val % mm
        val = val // mm
    if np.any(val):
        raise ValueError(f"corrupt codes: a packed word is not below {m}^{j}")
    h = h.reshape(-1)
    if np.any(h[n:]):  # the packer fills the last word with zero symbols
        raise ValueError("corrupt codes: the padding of the last packed word is not zero")
    return h[:n], pos


def digit_bits(q: int) -> float:
    """Bits per base-q digit as packed by :func:`pack_base_q`: ``a + W/J`` (before byte padding)."""
    a, m, j, w = _pack_params(q)
    return a + (w / j if m > 1 else 0.0)


#: Digits (and words) packed per step by :func:`pack_base_q` (a multiple of 8: every step
#: writes whole bytes of each stream, so the steps' bytes are those of one pass).
PACK_CHUNK = 1 << 16


def _wide_fields(width: int) -> list[int]:
    """Field widths of :func:`mmquant.packing.pack_wide`: 16 bits each from the low end."""
    return [16] * (width // 16) + ([width % 16] if width % 16 else [])


def pack_base_q(digits: np.ndarray, q: int) -> np.ndarray:
    """Pack digits in [0, q) (any shape, C order) into bytes at :func:`digit_bits` bits each.

    With ``q = 2^a·m`` (m odd) every digit ``d = 2^a·h + l`` gives ``a`` raw bits ``l`` and a
    base-m digit ``h``; the raw bits are packed as they are, the base-m digits in words of J
    (one integer ``< m^J ≤ 2^64`` by Horner's rule, ``W`` bits, split into ≤ 16-bit fields packed
    by :func:`mmquant.packing.pack`). q = 14: 1 + 59/21 = 3.8095 bits per digit, 0.002 above
    log2 14 (one word of 16 digits in 61 bits would cost 0.005).

    The streams are written about :data:`PACK_CHUNK` digits at a time into one output array: the
    temporaries are a few times that, whatever the number of digits.
    """
    a, m, j, w = _pack_params(q)
    d = np.asarray(digits).reshape(-1)
    n = d.size
    n_raw = packed_nbytes(n, a) if a else 0
    n_words = -(-n // j) if m > 1 else 0
    fields = _wide_fields(w) if m > 1 else []
    starts = np.cumsum([n_raw] + [packed_nbytes(n_words, f) for f in fields])
    out = np.empty(int(starts[-1]), np.uint8)
    if a:
        low = (1 << a) - 1
        for c0 in range(0, n, PACK_CHUNK):
            part = pack(d[c0 : c0 + PACK_CHUNK] & low, a)
            out[c0 // 8 * a : c0 // 8 * a + part.size] = part
    mm = np.uint64(m)
    step = max(8, PACK_CHUNK // j // 8 * 8)
    for w0 in range(0, n_words, step):  # words of J base-m digits, the last zero-padded
        w1 = min(n_words, w0 + step)
        seg = d[w0 * j : min(w1 * j, n)]
        p = np.zeros((w1 - w0) * j, np.uint64)
        p[: seg.size] = seg
        p >>= np.uint64(a)
        p = p.reshape(w1 - w0, j)
        val = np.zeros(w1 - w0, np.uint64)
        for i in range(j - 1, -1, -1):  # exact: val < m^J ≤ 2^64
            val = val * mm + p[:, i]
        shift = 0
        for f, start in zip(fields, starts[:-1]):
            part = pack((val >> np.uint64(shift)) & np.uint64((1 << f) - 1), f)
            pos = int(start) + w0 // 8 * f
            out[pos : pos + part.size] = part
            shift += f
    return out


def base_q_nbytes(q: int, n_blocks: int) -> int:
    """Bytes :func:`pack_base_q` writes for the digits of ``n_blocks`` blocks of 8."""
    a, m, j, w = _pack_params(q)
    n = 8 * n_blocks
    return (packed_nbytes(n, a) if a else 0) + (packed_wide_nbytes(-(-n // j), w) if m > 1 else 0)


def unpack_base_q(data: np.ndarray, q: int, n_blocks: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`pack_base_q`: ((n_blocks, 8) int64 digits, bytes consumed)."""
    a, m, j, w = _pack_params(q)
    n = n_blocks * 8
    d = np.zeros(n, np.uint64)
    pos = 0
    if a:
        nb = packed_nbytes(n, a)
        d |= unpack(data[pos : pos + nb], a, n).astype(np.uint64)
        pos += nb
    if m > 1:
        h, pos = _unpack_words(data, pos, n, m, j, w)
        d |= h << np.uint64(a)
    return d.astype(np.int64).reshape(n_blocks, 8), pos


#: Largest union code ``Σ q_j^8`` whose block indices fit the packer's uint64 arithmetic.
UNION_MAX = 2**62


def union_size(qs: tuple[int, ...] | np.ndarray) -> int:
    """Number of codewords ``Σ_j q_j^8`` of the union of the k scaled codes (exact integer)."""
    return sum(int(q) ** 8 for q in np.asarray(qs).reshape(-1))


def _union_params(size: int) -> tuple[int, int, int, int]:
    """(L, H, J, W) of :func:`pack_union`: L raw low bits, base-H high part in J-symbol words.

    L minimises ``L + W/J`` with ``H = ⌈size / 2^L⌉`` (the smallest L on ties).
    """
    best: tuple[float, int, int, int, int] | None = None
    for low in range(size.bit_length() + 1):
        h = -(-size >> low)
        j, w = _word_params(h)
        cost = low + (w / j if h > 1 else 0.0)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, low, h, j, w)
    assert best is not None
    return best[1:]


def union_bits(qs: tuple[int, ...] | np.ndarray) -> float:
    """Bits per block of 8 of :func:`pack_union` (before byte padding); ≈ ``log2 Σ q_j^8``."""
    low, h, j, w = _union_params(union_size(qs))
    return low + (w / j if h > 1 else 0.0)


def _union_offsets(qs: np.ndarray) -> np.ndarray:
    sizes = [int(q) ** 8 for q in qs]
    return np.array([sum(sizes[:i]) for i in range(len(sizes))], np.uint64)


def pack_union(digits: np.ndarray, beta_index: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Pack blocks of a union code (one code size q_j per scale) at :func:`union_bits` each.

    Block ``(j, b)`` (scale j, digits b in [0, q_j)) has the index
    ``s = Σ_{i<j} q_i^8 + Σ_t b_t·q_j^t`` in ``[0, Σ q_j^8)``: the β index costs no separate
    bits, so the rate is ``log2(Σ q_j^8)/8`` per entry (the fixed rate of the union codebook).
    ``s = 2^L·h + l``: the L raw bits l as they are, ``h < H = ⌈Σ q_j^8 / 2^L⌉`` in base-H
    words (:func:`_union_params`); the loss against ``log2 Σ q_j^8`` is below 0.001 bit per
    block for the code sizes used here.
    """
    qs = np.asarray(qs, np.int64)
    size = union_size(qs)
    if size > UNION_MAX:
        raise ValueError(f"union code of {size} codewords exceeds the packer's limit 2^62")
    d = np.asarray(digits).reshape(-1, 8)  # converted a column at a time (no uint64 copy)
    bi = np.asarray(beta_index, np.int64)
    qb = qs.astype(np.uint64)[bi]
    s = np.zeros(d.shape[0], np.uint64)
    for t in range(7, -1, -1):
        s = s * qb + d[:, t].astype(np.uint64)
    s = s + _union_offsets(qs)[bi]
    low, h, j, w = _union_params(size)
    out = [pack_wide(s, low)]
    if h > 1:
        out += _pack_words(s >> np.uint64(low), h, j, w)
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def union_nbytes(qs: tuple[int, ...] | np.ndarray, n_blocks: int) -> int:
    """Bytes :func:`pack_union` writes for ``n_blocks`` blocks of the union code ``qs``."""
    low, h, j, w = _union_params(union_size(qs))
    return packed_wide_nbytes(n_blocks, low) + (
        packed_wide_nbytes(-(-n_blocks // j), w) if h > 1 else 0
    )


def unpack_union(
    data: np.ndarray, qs: np.ndarray, n_blocks: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Inverse of :func:`pack_union`: ((n, 8) int64 digits, (n,) int64 β indices, bytes used).

    Raises ``ValueError`` if a block index is not below ``Σ q_j^8`` (corrupt data).
    """
    qs = np.asarray(qs, np.int64)
    size = union_size(qs)
    low, h, j, w = _union_params(size)
    s, pos = unpack_wide(data, low, n_blocks)
    if h > 1:
        hi, pos = _unpack_words(data, pos, n_blocks, h, j, w)
        s |= hi << np.uint64(low)
    if np.any(s >= np.uint64(size)):
        raise ValueError(f"corrupt codes: a block index is not below the code size {size}")
    off = _union_offsets(qs)
    bi = np.searchsorted(off, s, side="right").astype(np.int64) - 1
    r = s - off[bi]
    qb = qs.astype(np.uint64)[bi]
    d = np.empty((n_blocks, 8), np.int64)
    for t in range(8):
        d[:, t] = (r % qb).astype(np.int64)
        r = r // qb
    return d, bi, pos
