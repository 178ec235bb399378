"""Numba kernels of the block engine (mmquant.formats.engine: int, fp, MX, NVFP4, NF4, companders).

Each kernel repeats, element by element and in the same floating-point type, the operations of the
numpy reference, so the codes and reconstructions are bit-exact with it (tests check every format
on random data, ties and edge cases):

* :func:`block_absmax` / :func:`block_minmax` -- per-group max|x| / min and max (exact operations);
* :func:`encode_div_int` -- ``clip(rint((x − off)/d), lo, hi) + add`` (INT, symmetric or affine);
* :func:`encode_mul_int` -- ``clip(rint((x·inv)·mult), lo, hi)`` as two's complement (MXINT8);
* :func:`encode_fp` -- ExMy code of ``x/d`` or ``x·d`` (round to nearest even, saturation), by the
  algorithm of :func:`mmquant.formats.minifloat.encode_elements` (exponent from the float32 bits;
  float64 input takes the numpy reference path in the callers);
* :func:`encode_codebook` -- index of the nearest codebook point by counting thresholds ``≤ u``;
* :func:`decode_table` -- ``table[code] · s`` in float32;
* :func:`pack` / :func:`unpack` -- the byte layout of :mod:`mmquant.packing` for widths 1..8.

Groups: ``x`` is ``(rows, n)`` and group ``k`` of a row covers columns ``[k·g, (k+1)·g)`` (the last
one may be shorter). Importing this module compiles nothing; the first call compiles (cached on
disk when a cache folder is writable: :func:`mmquant.kernels.numba_cache`). Raises ImportError
without numba: callers fall back to numpy.
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import numba_cache
from mmquant.packing import check_padding

__all__ = [
    "block_absmax",
    "block_minmax",
    "encode_div_int",
    "encode_mul_int",
    "encode_fp",
    "encode_codebook",
    "decode_table",
    "pack",
    "unpack",
]

#: Serial kernels (``numba.prange`` runs as ``range``): on these memory-bound loops
#: ``parallel=True`` tripled the compile time of every kernel for little or no speed-up on
#: small machines (and a slow-down on busy ones); they release the GIL for callers' threads.
_opts = {"parallel": False, "cache": numba_cache(), "fastmath": False, "nogil": True}


@numba.njit(**_opts)
def _absmax(x, g, out):  # pragma: no cover - compiled
    rows, n = x.shape
    ng = out.shape[1]
    for i in numba.prange(rows):
        for k in range(ng):
            m = 0.0
            for j in range(k * g, min(n, (k + 1) * g)):
                a = abs(x[i, j])
                if a > m:
                    m = a
            out[i, k] = m


@numba.njit(**_opts)
def _minmax(x, g, lo, hi):  # pragma: no cover - compiled
    rows, n = x.shape
    ng = lo.shape[1]
    for i in numba.prange(rows):
        for k in range(ng):
            a = x[i, k * g]
            b = a
            for j in range(k * g + 1, min(n, (k + 1) * g)):
                v = x[i, j]
                if v < a:
                    a = v
                if v > b:
                    b = v
            lo[i, k] = a
            hi[i, k] = b


@numba.njit(**_opts)
def _enc_div_int(x, g, d, off, lo, hi, add, out):  # pragma: no cover - compiled
    rows, n = x.shape
    ng = d.shape[1]
    for i in numba.prange(rows):
        base = i * n
        for k in range(ng):
            dk = d[i, k]
            ok = off[i, k]
            for j in range(k * g, min(n, (k + 1) * g)):
                r = np.rint((x[i, j] - ok) / dk)
                r = min(max(r, lo), hi)
                out[base + j] = np.uint8(np.int32(r) + add)


@numba.njit(**_opts)
def _enc_mul_int(x, g, inv, mult, lo, hi, out):  # pragma: no cover - compiled
    rows, n = x.shape
    ng = inv.shape[1]
    for i in numba.prange(rows):
        base = i * n
        for k in range(ng):
            ik = inv[i, k]
            for j in range(k * g, min(n, (k + 1) * g)):
                r = np.rint((x[i, j] * ik) * mult)
                r = min(max(r, lo), hi)
                out[base + j] = np.uint8(np.int32(r) & 255)


@numba.njit(**_opts)
def _enc_fp32(x, g, d, mul, inv_q, e_lo, mbits, max_code, sign_bit, out):  # pragma: no cover
    # float32 only: the exponent is read from the bits, as in the numpy reference
    rows, n = x.shape
    ng = d.shape[1]
    for i in numba.prange(rows):
        base = i * n
        t = np.empty(n, np.float32)
        for k in range(ng):
            dk = d[i, k]
            for j in range(k * g, min(n, (k + 1) * g)):
                t[j] = x[i, j] * dk if mul else x[i, j] / dk
        u = t.view(np.uint32)
        for j in range(n):
            e = max(np.int32((u[j] >> 23) & 255), e_lo)  # biased exponent, at least emin's
            v = np.rint(abs(t[j]) * inv_q[e])  # exact scaling by 1/q, ties to even
            code = min(((e - e_lo) << mbits) + np.int32(v), max_code)
            code |= np.int32(u[j] >> 31) * sign_bit
            out[base + j] = np.uint8(code)


@numba.njit(**_opts)
def _enc_codebook(x, g, d, thr, out):  # pragma: no cover - compiled
    rows, n = x.shape
    ng = d.shape[1]
    nt = thr.size
    for i in numba.prange(rows):
        base = i * n
        for k in range(ng):
            dk = d[i, k]
            for j in range(k * g, min(n, (k + 1) * g)):
                u = x[i, j] / dk
                c = 0
                for m in range(nt):
                    c += thr[m] <= u
                out[base + j] = np.uint8(c)


@numba.njit(**_opts)
def _dec(codes, table, s, g, out):  # pragma: no cover - compiled
    rows, n = out.shape
    ng = s.shape[1]
    for i in numba.prange(rows):
        base = i * n
        for k in range(ng):
            sk = s[i, k]
            for j in range(k * g, min(n, (k + 1) * g)):
                out[i, j] = table[codes[base + j]] * sk


@numba.njit(**_opts)
def _dec_off(codes, table, s, o, g, out):  # pragma: no cover - compiled
    rows, n = out.shape
    ng = s.shape[1]
    for i in numba.prange(rows):
        base = i * n
        for k in range(ng):
            sk = s[i, k]
            ok = o[i, k]
            for j in range(k * g, min(n, (k + 1) * g)):
                out[i, j] = table[codes[base + j]] * sk + ok


@numba.njit(**_opts)
def _pack(codes, width, out):  # pragma: no cover - compiled
    groups = out.size // width
    n = codes.size
    for gi in numba.prange(groups):
        acc = np.uint64(0)
        for c in range(8):
            i = gi * 8 + c
            if i < n:
                acc |= np.uint64(codes[i]) << np.uint64(c * width)
        for b in range(width):
            out[gi * width + b] = np.uint8((acc >> np.uint64(8 * b)) & np.uint64(255))


@numba.njit(**_opts)
def _unpack(data, width, out):  # pragma: no cover - compiled
    n = out.size
    groups = (n + 7) // 8
    mask = np.uint64((1 << width) - 1)
    for gi in numba.prange(groups):
        acc = np.uint64(0)
        for b in range(width):
            acc |= np.uint64(data[gi * width + b]) << np.uint64(8 * b)
        for c in range(8):
            i = gi * 8 + c
            if i < n:
                out[i] = np.uint8((acc >> np.uint64(c * width)) & mask)


def _ng(n: int, g: int) -> int:
    return -(-n // g)


def block_absmax(x2: np.ndarray, g: int) -> np.ndarray:
    """``max|x|`` per group of ``g`` along the rows of ``x2``, as float64 ``(rows, ceil(n/g))``."""
    out = np.empty((x2.shape[0], _ng(x2.shape[1], g)), x2.dtype)
    _absmax(x2, g, out)
    return out.astype(np.float64) + 0.0


def block_minmax(x2: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per group, as float64 ``(rows, ceil(n/g))`` arrays."""
    shape = (x2.shape[0], _ng(x2.shape[1], g))
    lo, hi = np.empty(shape, x2.dtype), np.empty(shape, x2.dtype)
    _minmax(x2, g, lo, hi)
    return lo.astype(np.float64) + 0.0, hi.astype(np.float64) + 0.0


def encode_div_int(
    x2: np.ndarray, g: int, d: np.ndarray, off: np.ndarray | None, lo: int, hi: int, add: int
) -> np.ndarray:
    """uint8 codes ``clip(rint((x − off)/d), lo, hi) + add`` (``d``, ``off`` per group, x's dtype)."""
    d = np.ascontiguousarray(d, x2.dtype)
    off = np.zeros_like(d) if off is None else np.ascontiguousarray(off, x2.dtype)
    out = np.empty(x2.size, np.uint8)
    _enc_div_int(x2, g, d, off, float(lo), float(hi), int(add), out)
    return out


def encode_mul_int(
    x2: np.ndarray, g: int, inv: np.ndarray, mult: float, lo: int, hi: int
) -> np.ndarray:
    """uint8 two's complement of ``clip(rint((x·inv)·mult), lo, hi)``."""
    inv = np.ascontiguousarray(inv, x2.dtype)
    out = np.empty(x2.size, np.uint8)
    _enc_mul_int(x2, g, inv, x2.dtype.type(mult), float(lo), float(hi), out)
    return out


def encode_fp(
    x2: np.ndarray,
    g: int,
    d: np.ndarray,
    mul: bool,
    emin: int,
    mbits: int,
    max_code: int,
    bits: int,
) -> np.ndarray:
    """uint8 ExMy codes of ``x·d`` (``mul``) or ``x/d``, ``d`` per group; float32 ``x2`` only."""
    if x2.dtype != np.float32:
        raise TypeError(f"encode_fp takes float32 input, got {x2.dtype}")
    d = np.ascontiguousarray(d, np.float32)
    e_lo = 127 + int(emin)
    # 1/q for each biased float32 exponent e >= e_lo: 2^(m − (e − 127)), exact in float32
    inv_q = np.zeros(256, np.float32)
    e = np.arange(e_lo, 256)
    inv_q[e_lo:] = np.exp2(float(mbits) - (e - 127.0)).astype(np.float32)
    out = np.empty(x2.size, np.uint8)
    _enc_fp32(x2, g, d, bool(mul), inv_q, e_lo, int(mbits), int(max_code), 1 << (bits - 1), out)
    return out


def encode_codebook(x2: np.ndarray, g: int, d: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """uint8 number of thresholds ``≤ x/d`` (``searchsorted(..., 'right')`` of ``x/d``)."""
    d = np.ascontiguousarray(d, x2.dtype)
    out = np.empty(x2.size, np.uint8)
    _enc_codebook(x2, g, d, np.ascontiguousarray(thresholds, x2.dtype), out)
    return out


def decode_table(
    codes: np.ndarray,
    table: np.ndarray,
    s: np.ndarray,
    g: int,
    n: int,
    off: np.ndarray | None = None,
) -> np.ndarray:
    """float32 ``table[code] · s`` (``+ off``) with ``s``, ``off`` per group, shape ``(rows, n)``.

    The sizes the kernel indexes with are checked here: ``codes`` holds ``rows·n`` uint8 codes,
    ``s`` (and ``off``) is ``(rows, ⌈n/g⌉)``; the table is extended with NaN to 256 entries so that
    no code reads past it (a code beyond the format's table decodes to NaN).
    """
    s = np.ascontiguousarray(s, np.float32)
    c = np.ascontiguousarray(codes, np.uint8).reshape(-1)
    if s.ndim != 2 or g < 1 or n < 1 or s.shape[1] != _ng(n, g) or c.size != s.shape[0] * n:
        raise ValueError(
            f"decode_table: {c.size} codes and scales of shape {s.shape} do not fit rows of "
            f"{n} entries in groups of {g}"
        )
    if off is not None and np.shape(off) != s.shape:
        raise ValueError(f"decode_table: offsets of shape {np.shape(off)}, scales {s.shape}")
    out = np.empty((s.shape[0], n), np.float32)
    t = np.full(256, np.nan, np.float32)
    tab = np.asarray(table, np.float32).reshape(-1)[:256]
    t[: tab.size] = tab
    if off is None:
        _dec(c, t, s, g, out)
    else:
        _dec_off(c, t, s, np.ascontiguousarray(off, np.float32), g, out)
    return out


def pack(codes: np.ndarray, width: int) -> np.ndarray:
    """Same bytes as :func:`mmquant.packing.pack` for uint8 codes of width 1..8 (no range check)."""
    c = np.ascontiguousarray(codes, np.uint8).reshape(-1)
    out = np.empty(int(width) * _ng(c.size, 8), np.uint8)
    _pack(c, int(width), out)
    return out


def unpack(data: np.ndarray, width: int, n: int) -> np.ndarray:
    """Same codes as :func:`mmquant.packing.unpack` for widths 1..8.

    Raises ``ValueError`` if ``data`` is shorter than ``width·⌈n/8⌉`` bytes (the kernel reads
    whole groups of 8 codes) or the padding after the last code is not zero.
    """
    width, n = int(width), int(n)
    if not 1 <= width <= 8 or n < 0:
        raise ValueError(f"unpack: width must be 1..8 and n ≥ 0, got {width} and {n}")
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    need = width * _ng(n, 8)
    if data.size < need:
        raise ValueError(
            f"packed data too short: {n} codes of {width} bits need {need} bytes, got {data.size}"
        )
    check_padding(data, width, n)
    out = np.empty(n, np.uint8)
    _unpack(data, width, out)
    return out
