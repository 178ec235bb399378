"""Numpy reference of the products from the codes; the numba kernels compute the same numbers.

Accumulation order (the definition both backends follow, so that they agree bit for bit):

**Block formats.** For row ``i``, group ``k`` (entries ``j ∈ [k·g, k·g + g)``, the last group of a
row possibly shorter) and activation ``t``:

1. the group is padded with zeros to ``gp = ⌈g/8⌉·8`` entries (codes and activations);
2. eight float32 lane sums ``a_l = Σ_s fl32(table[c_{8s+l}] · x_{t, 8s+l})``, each accumulated
   in increasing ``s`` from 0 (every product and sum rounded to float32);
3. the group sum ``P = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))`` in float32;
4. the row sum ``y_it = Σ_k (S_ik·P_ikt [+ O_ik·V_kt])`` in float64, in increasing ``k`` from
   ``+0.0`` (``S``, ``O`` the float32 scale and offset; ``V_kt`` the same lane sum of the
   activations alone; each product is exact in float64).

The scale is applied once per group, after the element sum: the result differs from
decode-then-multiply (which rounds ``table[c]·S`` to float32 first) by float32 rounding only.

**Lattice codes.** The other operand is rotated once (``⟨R⁻¹a, v⟩ = ⟨a, Rv⟩``: the rotation is
orthogonal) and padded to ``⌈n/8⌉·8``; for every row the 8-block sums ``Σ_l ẑ_l·v_l`` (float64,
``l = 0..7`` in order, from ``+0.0``) are added in increasing block order from ``+0.0``, then the
row is multiplied by its factor ``norm·α`` once.
"""

from __future__ import annotations

import numpy as np

from mmquant.packing import unpack
from mmquant.products.records import BlockView

__all__ = ["LANES", "pad_groups", "lane_sum", "block_product", "lattice_dot", "CHUNK"]

#: Lanes of the float32 partial sums of a group.
LANES = 8
#: Entries of the float temporaries of the reference, per step (a chunk of rows at a time).
CHUNK = 1 << 18


def padded_group(g: int) -> int:
    """Group length padded to a multiple of :data:`LANES`."""
    return -(-g // LANES) * LANES


def pad_groups(x: np.ndarray, g: int, ng: int) -> np.ndarray:
    """``(b, n)`` float32 → ``(b, ng, gp)`` float32: each group of ``g`` entries zero-padded."""
    b, n = x.shape
    full = np.zeros((b, ng * g), np.float32)
    full[:, :n] = x
    out = np.zeros((b, ng, padded_group(g)), np.float32)
    out[:, :, :g] = full.reshape(b, ng, g)
    return out


def lane_sum(prod: np.ndarray) -> np.ndarray:
    """Steps 2–3 of the module docstring over the last axis (a multiple of 8), in float32."""
    acc = np.zeros((*prod.shape[:-1], LANES), np.float32)
    for s in range(0, prod.shape[-1], LANES):
        acc += prod[..., s : s + LANES]
    a = acc
    return ((a[..., 0] + a[..., 1]) + (a[..., 2] + a[..., 3])) + (
        (a[..., 4] + a[..., 5]) + (a[..., 6] + a[..., 7])
    )


def block_product(view: BlockView, xp: np.ndarray, vsum: np.ndarray | None) -> np.ndarray:
    """``(rows, b)`` float64 product of a block view with padded activations (numpy reference).

    Parameters
    ----------
    view : BlockView
    xp : numpy.ndarray
        :func:`pad_groups` of the float32 activations, ``(b, ng, gp)``.
    vsum : numpy.ndarray or None
        ``lane_sum(xp)`` as float64 ``(b, ng)`` (affine records), else ``None``.
    """
    rows, n, g = view.rows, view.n, view.group
    b, ng, gp = xp.shape
    codes = unpack(view.codes, view.width, rows * n)  # integer codes, one byte per entry
    out = np.empty((rows, b))
    step = max(1, CHUNK // (ng * gp))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        vals = np.zeros((r1 - r0, ng * g), np.float32)
        vals[:, :n] = view.table[codes[r0 * n : r1 * n].reshape(r1 - r0, n)]
        vp = np.zeros((r1 - r0, ng, gp), np.float32)
        vp[:, :, :g] = vals.reshape(r1 - r0, ng, g)
        s64 = view.scale[r0:r1].astype(np.float64)
        o64 = None if view.offset is None else view.offset[r0:r1].astype(np.float64)
        for t in range(b):
            terms = s64 * lane_sum(vp * xp[t][None]).astype(np.float64)
            if o64 is not None and vsum is not None:
                terms = terms + o64 * vsum[t][None]
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
