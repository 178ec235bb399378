"""Bit packing of unsigned integer codes of any width 1..16 bits.

Layout (little-endian bit stream): code ``i`` of width ``w`` occupies bits ``[i*w, (i+1)*w)`` of the
stream, bit ``k`` of the stream being bit ``k % 8`` (LSB first) of byte ``k // 8``. The stream is
padded with zero bits to a whole number of **groups of 8 codes** (``w`` bytes each), so a packed
array of ``n`` codes takes ``w * ceil(n / 8)`` bytes: at most ``w - 1`` bytes of padding in total.

The implementation is vectorised numpy: widths 1, 2 and 4 are shifted into bytes directly; other
widths assemble each group of 8 codes (at most 128 bits) in one or two ``uint64`` words, whose
little-endian bytes are the stream.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "pack",
    "unpack",
    "packed_nbytes",
    "check_padding",
    "pack_wide",
    "unpack_wide",
    "packed_wide_nbytes",
]


def packed_nbytes(n: int, width: int) -> int:
    """Number of bytes :func:`pack` uses for ``n`` codes of ``width`` bits."""
    _check_width(width)
    return width * (-(-int(n) // 8))


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= 16:
        raise ValueError(f"code width must be an integer in [1, 16] bits, got {width!r}")


def pack(codes: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integer codes into a byte stream.

    Parameters
    ----------
    codes : numpy.ndarray
        Non-negative integers, each ``< 2**width``; any shape (flattened in C order).
    width : int
        Bits per code, 1..16.

    Returns
    -------
    numpy.ndarray
        1-D ``uint8`` array of ``packed_nbytes(codes.size, width)`` bytes.

    Raises
    ------
    ValueError
        If the width is out of range or a code does not fit in ``width`` bits.
    """
    _check_width(width)
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got dtype {c.dtype}")
    c = c.reshape(-1)
    n = c.size
    if n and (int(c.min()) < 0 or int(c.max()) >= (1 << width)):
        raise ValueError(
            f"codes must lie in [0, {(1 << width) - 1}] for width {width}, "
            f"got range [{int(c.min())}, {int(c.max())}]"
        )
    groups = -(-n // 8)
    if width == 8:
        out = np.zeros(groups * 8, np.uint8)
        out[:n] = c
        return out
    if width == 16:
        out16 = np.zeros(groups * 8, "<u2")
        out16[:n] = c
        return out16.view(np.uint8)
    if n % 8 == 0 and c.dtype == np.uint8:
        padded8 = c
    else:
        padded8 = np.zeros(groups * 8, np.uint8 if width <= 8 else np.uint16)
        padded8[:n] = c
    if width in (1, 2, 4):  # whole codes per byte: fast uint8 path
        per = 8 // width
        g = padded8.reshape(-1, per)
        out = g[:, 0].astype(np.uint8)
        for i in range(1, per):
            out |= g[:, i].astype(np.uint8) << np.uint8(i * width)
        return out
    g = padded8.reshape(groups, 8)
    lo = np.zeros(groups, np.uint64)
    hi = np.zeros(groups, np.uint64)
    for i in range(8):
        off = i * width
        col = g[:, i].astype(np.uint64)
        if off < 64:
            lo |= col << np.uint64(off)
            if off + width > 64:
                hi |= col >> np.uint64(64 - off)
        else:
            hi |= col << np.uint64(off - 64)
    if width <= 8:
        return np.ascontiguousarray(
            lo.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :width]
        ).reshape(-1)
    words = np.empty((groups, 2), "<u8")
    words[:, 0] = lo
    words[:, 1] = hi
    return np.ascontiguousarray(words.view(np.uint8).reshape(groups, 16)[:, :width]).reshape(-1)


def unpack(data: np.ndarray, width: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`: read ``n`` codes of ``width`` bits.

    Returns
    -------
    numpy.ndarray
        1-D array of ``n`` codes, ``uint8`` for width ≤ 8, else ``uint16``.

    Raises
    ------
    ValueError
        If ``data`` is shorter than ``packed_nbytes(n, width)`` bytes, or the padding bits after
        the last code are not zero (:func:`pack` writes zeros there).
    """
    _check_width(width)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise TypeError(f"packed data must be a 1-D uint8 array, got {data.dtype} {data.shape}")
    need = packed_nbytes(n, width)
    if data.size < need:
        raise ValueError(
            f"packed data too short: {n} codes of {width} bits need {need} bytes, got {data.size}"
        )
    check_padding(data, width, n)
    out_dtype = np.uint8 if width <= 8 else np.uint16
    if width == 8:
        return data[:n].copy()
    if width == 16:
        return data[: 2 * n].view("<u2").astype(np.uint16)
    groups = -(-n // 8)
    mask = (1 << width) - 1
    if width in (1, 2, 4):
        per = 8 // width
        d = data[:need]
        out8 = np.empty((d.size, per), np.uint8)
        for i in range(per):
            out8[:, i] = (d >> np.uint8(i * width)) & np.uint8(mask)
        return out8.reshape(-1)[:n]
    nwords = 1 if width <= 8 else 2
    raw = np.zeros((groups, 8 * nwords), np.uint8)
    raw[:, :width] = data[:need].reshape(groups, width)
    words = raw.view("<u8")
    lo = words[:, 0].astype(np.uint64)
    hi = words[:, 1].astype(np.uint64) if nwords == 2 else None
    out = np.empty((groups, 8), out_dtype)
    m64 = np.uint64(mask)
    for i in range(8):
        off = i * width
        if off < 64:
            v = lo >> np.uint64(off)
            if off + width > 64:
                v = v | (hi << np.uint64(64 - off))
        else:
            v = hi >> np.uint64(off - 64)
        out[:, i] = v & m64
    return out.reshape(-1)[:n]


def check_padding(data: np.ndarray, width: int, n: int) -> None:
    """ValueError unless the bits after code ``n`` up to ``packed_nbytes(n, width)`` are zero.

    ``data`` is a uint8 array of at least that many bytes. A record whose shape claims fewer
    codes than were packed usually fails this check.
    """
    used = width * int(n)
    end = packed_nbytes(n, width)
    first, rem = divmod(used, 8)
    tail = np.asarray(data[first:end])
    if tail.size and ((int(tail[0]) >> rem) or (tail.size > 1 and np.any(tail[1:]))):
        raise ValueError(
            f"corrupt codes: the padding after the last of {n} codes of {width} bits is not zero"
        )


def _fields(width: int) -> list[int]:
    return [16] * (width // 16) + ([width % 16] if width % 16 else [])


def packed_wide_nbytes(n: int, width: int) -> int:
    """Number of bytes :func:`pack_wide` uses for ``n`` values of ``width`` bits (0..64)."""
    if not 0 <= width <= 64:
        raise ValueError(f"wide code width must be in [0, 64] bits, got {width!r}")
    return sum(packed_nbytes(n, f) for f in _fields(width))


def pack_wide(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers of up to 64 bits, ``width`` bits each (0 ≤ width ≤ 64).

    The values are cut into fields of 16 bits from the low end (the last one narrower), and each
    field of all the values is one :func:`pack` stream, the low field first:
    ``Σ packed_nbytes(n, f)`` bytes in all. Width 0 stores nothing (every value must be 0).
    """
    if not 0 <= width <= 64:
        raise ValueError(f"wide code width must be in [0, 64] bits, got {width!r}")
    v = np.asarray(values, np.uint64).reshape(-1)
    out, shift = [], 0
    for f in _fields(width):
        out.append(pack((v >> np.uint64(shift)) & np.uint64((1 << f) - 1), f))
        shift += f
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def unpack_wide(data: np.ndarray, width: int, n: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`pack_wide`: (``n`` uint64 values, bytes consumed).

    Raises ``ValueError`` if ``data`` ends before the ``n`` values.
    """
    if not 0 <= width <= 64:
        raise ValueError(f"wide code width must be in [0, 64] bits, got {width!r}")
    data = np.asarray(data)
    v = np.zeros(n, np.uint64)
    pos = shift = 0
    for f in _fields(width):
        nb = packed_nbytes(n, f)
        if pos + nb > data.size:
            raise ValueError(f"corrupt codes: the packed data ends after {data.size} bytes")
        v |= unpack(data[pos : pos + nb], f, n).astype(np.uint64) << np.uint64(shift)
        pos += nb
        shift += f
    return v, pos
