"""Numpy reference of the products from the codes; the numba kernels compute the same numbers.

Accumulation order (the definition both backends follow, so that they agree bit for bit):

**Block formats.** For row ``i``, group ``k`` (columns ``j ∈ [k·g, min(n, k·g + g))``) and
activation ``t`` (a row of ``x``):

1. the group sum ``P_ikt = Σ_j fl32(T[c_ij] · x_tj)`` in float32, the terms added in increasing
   ``j`` from ``+0.0`` (every product and every sum rounded to float32, no fused multiply–add);
2. for affine records, ``V_kt = Σ_j x_tj`` the same way;
3. the row sum ``y_it = Σ_k ((S_ik·u_kt)·P_ikt [+ (O_ik·u_kt)·V_kt])`` in float64, in increasing
   ``k`` from ``+0.0`` (``S``, ``O`` the float32 scale and offset as float64; ``u_kt`` a float64
   scale of the activations' group, 1 for float activations).

One running sum per row and group: a kernel keeps one SIMD lane per *row* (the row-tiled layout
of :mod:`mmquant.products.tiles`), so nothing is reordered. The scale is applied once per group,
after the element sum: the result differs from decode-then-multiply (which rounds ``T[c]·S`` to
float32 first) by float32 rounding only. For codes × codes with integer tables on both sides
(``int`` records), ``x`` holds the activations' integer values and ``u`` their group scales:
every ``P`` is then an exact integer sum, and the product is that of the exact decoded values.

**Lattice codes** (dithered records only: the others are multiplied from their integer
codewords, :mod:`mmquant.products.lattice`, which states its own order). The other operand is
rotated once (``⟨R⁻¹a, v⟩ = ⟨a, Rv⟩``: the rotation is
orthogonal) and padded to ``⌈n/8⌉·8``; for every row the 8-block sums ``Σ_l ẑ_l·v_l`` (float64,
``l = 0..7`` in order, from ``+0.0``) are added in increasing block order from ``+0.0``, then the
row is multiplied by its factor ``norm·α`` once.
"""

from __future__ import annotations

import numpy as np

from mmquant.packing import unpack
from mmquant.products.records import BlockView

__all__ = ["group_sums", "block_product", "lattice_dot", "CHUNK"]

#: Entries of the float temporaries of the reference, per step (a chunk of rows at a time).
CHUNK = 1 << 20


def group_sums(vals: np.ndarray, x: np.ndarray, g: int) -> np.ndarray:
    """Step 1 of the module docstring: ``(r, ng)`` float32 group sums of ``vals·x``.

    ``vals`` is ``(r, n)`` float32 (the decoded table values, or ones for step 2), ``x`` ``(n,)``
    float32. The last group is padded with zeros: adding ``fl32(0·0) = +0`` changes no sum (a
    running sum from ``+0.0`` is never ``-0``).
    """
    r, n = vals.shape
    ng = -(-n // g)
    vp = np.zeros((r, ng * g), np.float32)
    vp[:, :n] = vals
    xp = np.zeros(ng * g, np.float32)
    xp[:n] = x
    v3, x2 = vp.reshape(r, ng, g), xp.reshape(ng, g)
    acc = np.zeros((r, ng), np.float32)
    for jj in range(g):
        acc += v3[:, :, jj] * x2[:, jj]
    return acc


def activation_sums(x: np.ndarray, g: int) -> np.ndarray:
    """Step 2: ``(b, ng)`` float64 group sums of the float32 activations ``x`` ``(b, n)``.

    The sums of :func:`group_sums` with ``vals`` all ones (``fl32(1·x) = x``), for every
    activation at once: the same float32 additions in the same order."""
    b, n = x.shape
    ng = -(-n // g)
    xp = np.zeros((b, ng * g), np.float32)
    xp[:, :n] = x
    x3 = xp.reshape(b, ng, g)
    acc = np.zeros((b, ng), np.float32)
    for jj in range(g):
        acc += x3[:, :, jj]
    return acc.astype(np.float64)


def block_product(
    view: BlockView, x: np.ndarray, u: np.ndarray, vsum: np.ndarray | None
) -> np.ndarray:
    """``(rows, b)`` float64 product of a block view with activations (numpy reference).

    Parameters
    ----------
    view : BlockView
    x : numpy.ndarray
        float32 activations ``(b, n)``.
    u : numpy.ndarray
        float64 activation group scales ``(b, ng)`` (ones for float activations).
    vsum : numpy.ndarray or None
        :func:`activation_sums` of ``x`` (affine records), else ``None``.
    """
    rows, n, g = view.rows, view.n, view.group
    b = x.shape[0]
    codes = unpack(view.codes, view.width, rows * n)  # integer codes, one byte per entry
    out = np.empty((rows, b))
    step = max(1, CHUNK // max(n, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        vals = view.table[codes[r0 * n : r1 * n].reshape(r1 - r0, n)]
        s64 = view.scale[r0:r1].astype(np.float64)
        o64 = None if view.offset is None else view.offset[r0:r1].astype(np.float64)
        for t in range(b):
            p64 = group_sums(vals, x[t], g).astype(np.float64)
            terms = (s64 * u[t][None]) * p64
            if o64 is not None and vsum is not None:
                terms = terms + (o64 * u[t][None]) * vsum[t][None]
            out[r0:r1, t] = np.cumsum(terms, axis=1)[:, -1] + 0.0
    return out


def lattice_dot(zh: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(r, b)`` float64: the block-ordered inner products of decoded blocks ``zh`` ``(r, n8)``
    with rotated, padded activations ``v`` ``(b, n8)`` (module docstring)."""
    r, n8 = zh.shape
    z3 = zh.reshape(r, n8 // 8, 8)
    out = np.empty((r, v.shape[0]))
    for t in range(v.shape[0]):
        prod = z3 * v[t].reshape(n8 // 8, 8)[None]
        s = np.zeros(prod.shape[:-1])
        for lane in range(8):
            s += prod[..., lane]
        out[:, t] = np.cumsum(s, axis=1)[:, -1] + 0.0
    return out
