"""Numba kernels of the products from the codes (:mod:`mmquant.products`), bit-exact with the
numpy reference :mod:`mmquant.products.reference` (its docstring defines the accumulation order).

* :func:`block_product` -- fused unpack, table look-up and accumulation of a block-format record
  times float32 activations: each group's codes are decoded once into a small float32 buffer
  (in cache), then dotted with every activation in eight float32 lanes; the group's scale is
  applied once to the lane sum; rows run in parallel (``prange``).
* :func:`lattice_dot` -- the block-ordered float64 inner products of decoded lattice blocks with
  rotated activations, rows in parallel.

Importing this module compiles nothing; the first call compiles (cached on disk when a cache
folder is writable: :func:`mmquant.kernels.numba_cache`). Raises ImportError without numba.
"""

from __future__ import annotations

import numba
import numpy as np

from mmquant.kernels import numba_cache

__all__ = ["block_product", "lattice_dot"]

_opts = {"parallel": True, "cache": numba_cache(), "fastmath": False, "nogil": True}


@numba.njit(**_opts)
def _gemv4(codes, table, scale, offset, has_off, g, n, xp, vsum, out):  # pragma: no cover
    """Batch 1, 4-bit codes, groups of a multiple of 8 starting on whole bytes (n and g even):
    each lane step decodes four bytes straight into the eight lane products."""
    rows = out.shape[0]
    ng = scale.shape[1]
    for i in numba.prange(rows):
        acc = np.empty(8, np.float32)
        y = 0.0
        for k in range(ng):
            b0 = (i * n + k * g) >> 1
            for lane in range(8):
                acc[lane] = 0.0
            for st in range(0, g, 8):
                for h in range(4):
                    c = codes[b0 + (st >> 1) + h]
                    acc[2 * h] += table[c & 15] * xp[0, k, st + 2 * h]
                    acc[2 * h + 1] += table[c >> 4] * xp[0, k, st + 2 * h + 1]
            p = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
            term = np.float64(scale[i, k]) * np.float64(p)
            if has_off:
                term = term + np.float64(offset[i, k]) * vsum[0, k]
            y += term
        out[i, 0] = y


@numba.njit(**_opts)
def _gemv8(codes, table, scale, offset, has_off, g, n, xp, vsum, out):  # pragma: no cover
    """Batch 1, 8-bit codes, groups of a multiple of 8: codes read straight into the lanes."""
    rows = out.shape[0]
    ng = scale.shape[1]
    for i in numba.prange(rows):
        acc = np.empty(8, np.float32)
        y = 0.0
        for k in range(ng):
            e0 = i * n + k * g
            for lane in range(8):
                acc[lane] = 0.0
            for st in range(0, g, 8):
                for lane in range(8):
                    acc[lane] += table[codes[e0 + st + lane]] * xp[0, k, st + lane]
            p = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
            term = np.float64(scale[i, k]) * np.float64(p)
            if has_off:
                term = term + np.float64(offset[i, k]) * vsum[0, k]
            y += term
        out[i, 0] = y


@numba.njit(**_opts)
def _block(codes, width, table, scale, offset, has_off, g, n, xp, vsum, out):  # pragma: no cover
    """Any width, group and batch: a group is decoded once into a float32 buffer (in cache),
    then dotted with every activation in eight lanes."""
    rows = out.shape[0]
    b = xp.shape[0]
    ng = scale.shape[1]
    gp = xp.shape[2]
    mask = (1 << width) - 1
    for i in numba.prange(rows):
        w = np.zeros(gp, np.float32)
        acc = np.zeros(8, np.float32)
        y = np.zeros(b, np.float64)
        for k in range(ng):
            j0 = k * g
            gl = min(g, n - j0)
            e0 = i * n + j0
            if width == 4:
                for j in range(gl):
                    e = e0 + j
                    w[j] = table[(codes[e >> 1] >> ((e & 1) << 2)) & 15]
            elif width == 8:
                for j in range(gl):
                    w[j] = table[codes[e0 + j]]
            else:
                for j in range(gl):
                    bit = (e0 + j) * width
                    byte = bit >> 3
                    sh = bit & 7
                    v = np.int64(codes[byte]) >> sh
                    if sh + width > 8:
                        v |= np.int64(codes[byte + 1]) << (8 - sh)
                    w[j] = table[v & mask]
            for j in range(gl, gp):
                w[j] = 0.0
            s = np.float64(scale[i, k])
            for t in range(b):
                for lane in range(8):
                    acc[lane] = 0.0
                for st in range(0, gp, 8):
                    for lane in range(8):
                        acc[lane] += w[st + lane] * xp[t, k, st + lane]
                p = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + (
                    (acc[4] + acc[5]) + (acc[6] + acc[7])
                )
                term = s * np.float64(p)
                if has_off:
                    term = term + np.float64(offset[i, k]) * vsum[t, k]
                y[t] += term
        for t in range(b):
            out[i, t] = y[t]


def block_product(view, xp: np.ndarray, vsum: np.ndarray | None) -> np.ndarray:
    """Numba version of :func:`mmquant.products.reference.block_product` (same arguments)."""
    out = np.empty((view.rows, xp.shape[0]))
    has_off = view.offset is not None
    off = view.offset if has_off else view.scale
    vs = np.ascontiguousarray(vsum if vsum is not None else np.zeros(xp.shape[:2]), np.float64)
    xp = np.ascontiguousarray(xp, np.float32)
    kernel = _block
    if xp.shape[0] == 1 and view.group % 8 == 0 and view.n % view.group == 0:
        if view.width == 4 and view.n % 2 == 0:
            kernel = _gemv4
        elif view.width == 8:
            kernel = _gemv8
    if kernel is not _block:
        kernel(view.codes, view.table, view.scale, off, has_off, view.group, view.n, xp, vs, out)
        return out
    kernel(
        view.codes,
        view.width,
        view.table,
        view.scale,
        off,
        has_off,
        view.group,
        view.n,
        xp,
        vs,
        out,
    )
    return out


@numba.njit(**_opts)
def _ldot(zh, v, out):  # pragma: no cover - compiled
    r, n8 = zh.shape
    b = v.shape[0]
    for i in numba.prange(r):
        for t in range(b):
            y = 0.0
            for k in range(0, n8, 8):
                s = 0.0
                for lane in range(8):
                    s += zh[i, k + lane] * v[t, k + lane]
                y += s
            out[i, t] = y


def lattice_dot(zh: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Numba version of :func:`mmquant.products.reference.lattice_dot`."""
    out = np.empty((zh.shape[0], v.shape[0]))
    _ldot(np.ascontiguousarray(zh, np.float64), np.ascontiguousarray(v, np.float64), out)
    return out
