"""Products from nested-lattice codes (``e8``, ``d4``, ``zn``): codewords in registers, no floats.

A Voronoi-code record stores, for every 8-block of a row, the digits of a codeword ``y`` of Λ
(E8, D4 ⊕ D4 or Z⁸) inside the Voronoi cell of ``qΛ`` and the index of its scale β; the row
decodes to ``norm·α · R⁻¹[β(y)]`` (:mod:`mmquant.lattices.voronoi`; ``R`` the seeded randomized
Hadamard rotation). Since ``R`` is orthogonal, ``⟨R⁻¹ẑ, x⟩ = ⟨ẑ, Rx⟩``: the activations are
rotated once, and every row is a sum over its blocks of ``β · ⟨y, v_block⟩``. The codewords are
small integers in units of ``unit`` (½ for E8's half-integers, 1 for D4 and Zⁿ; ``|y_i| ≤ q``),
so a weight is kept as one signed byte per entry (int16 where a coordinate exceeds 127 units)
and one float32 scale per block, in the row-tiled layout of the numba kernel (:data:`TILE` rows per tile, one SIMD lane per
row), made once per weight from the record's digits and kept beside it: 2.7× fewer bytes than
the float32 weight (1.5 bytes per entry against 4), and the per-block scale, the per-row factor ``norm·α``, the rotation and the
re-centring are applied to sums, never to a float matrix.

Accumulation order (both backends, bit for bit). ``v`` is the activation ``x`` (float64)
rotated, zero-padded to ``⌈n/8⌉·8`` and rounded to float32. For row ``i``, activation ``t``:

1. every block sum ``P_k = Σ_{l=0..7} fl32(c_{k,l} · v_{8k+l})`` in float32 from ``+0.0``
   (``c`` the integer codeword in units of ``unit``, exact in float32);
2. the row sum ``Σ_k fl64(s_k · P_k)`` in float64, in increasing ``k`` from ``+0.0``, with
   ``s_k = fl32(β_{j_k}·unit)`` the block's scale (exact: the stored β are float32);
3. times the row factor ``norm·α`` (float64); with ``center=true`` the row mean's term is added
   as the decoder's re-centring implies (an activation of ones is multiplied alongside).

The result is that of decode-then-multiply within float32 rounding of the activations and of
the eight-term block sums. Dithered records (``dither=true``: a float dither in every block)
take the decoded blocks instead, a chunk of rows at a time (:attr:`LatticeView.blocks`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.core import Encoded
from mmquant.kernels import load
from mmquant.products.records import LatticeView
from mmquant.products.reference import CHUNK as _BLOCKS_CHUNK
from mmquant.products.reference import lattice_dot
from mmquant.rotations import RandomizedHadamard

__all__ = ["TILE", "LatticeTiles", "lattice_tiles", "reference_dot", "lattice_times"]

#: Rows per tile of :class:`LatticeTiles` (one SIMD lane per row).
TILE = 64
#: Entries of the temporaries of the reference and of the tiling, per step.
CHUNK = 1 << 20
#: Activations per kernel call (its per-tile row sums, ``BATCH × TILE`` float64, stay in cache).
BATCH = 64


@dataclass(frozen=True)
class LatticeTiles:
    """The codewords of a lattice record in the kernel's row-tiled layout.

    Attributes
    ----------
    codes : numpy.ndarray
        int8 (int16 where a coordinate exceeds 127 units) ``(tiles, n8, TILE)``: column ``j``
        of tile ``ti``, lane ``r`` is coordinate ``j`` of row ``ti·TILE + r`` in units of
        ``unit``; rows past the end are zero.
    bscale : numpy.ndarray
        float32 ``(tiles, n8 // 8, TILE)`` scale ``β · unit`` of every block (rows past the end:
        0). Stored as floats rather than β indices: a look-up per block and row costs the
        kernel more than the extra half byte per entry it reads.
    rows, n8 : int
        Rows of the matrix and padded row length.
    """

    codes: np.ndarray
    bscale: np.ndarray
    rows: int
    n8: int


def _steps(view: LatticeView) -> range:
    n8 = -(-view.n // 8) * 8
    return range(0, view.rows, max(1, CHUNK // n8))


def _checked_points(view: LatticeView, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    """The view's codewords and β indices of rows ``r0..r1-1``, their shapes and range checked."""
    n8 = -(-view.n // 8) * 8
    k = 0 if view.betas is None else view.betas.size
    c, bi = view.points(r0, r1)
    if c.shape != (r1 - r0, n8) or bi.shape != (r1 - r0, n8 // 8):
        raise ValueError(
            f"corrupt codes: codewords {c.shape} and β indices {bi.shape} for rows {r0}..{r1}"
        )
    if bi.size and (int(bi.min()) < 0 or int(bi.max()) >= k):
        raise ValueError(f"corrupt codes: a β index is not in [0, {k})")
    if c.size and int(np.max(np.abs(c))) > np.iinfo(np.int16).max:
        raise ValueError("corrupt codes: a codeword coordinate exceeds the Voronoi cell")
    return c, bi


def _scales(view: LatticeView) -> np.ndarray:
    """float32 ``β_j · unit`` of every scale (exact for the stored float32 β and unit ½)."""
    betas = view.betas
    if betas is None or betas.ndim != 1 or not betas.size or not np.all(np.isfinite(betas)):
        raise ValueError("corrupt side information: the record's β list is not usable")
    return (betas.astype(np.float64) * view.unit).astype(np.float32)


def lattice_tiles(view: LatticeView) -> LatticeTiles:
    """The :class:`LatticeTiles` of a (non-dithered) lattice view; numpy, once per weight.

    Raises
    ------
    ValueError
        The view has no integer codewords (a dithered record), or its codewords or β indices
        are out of range (a corrupt record).
    """
    if view.points is None:
        raise ValueError("a dithered lattice record has no integer codewords to tile")
    scales = _scales(view)
    rows, n8 = view.rows, -(-view.n // 8) * 8
    tiles = -(-rows // TILE)
    cs, bis, big = [], [], 0
    for r0 in _steps(view):
        c, bi = _checked_points(view, r0, min(rows, r0 + _steps(view).step))
        big = max(big, int(np.max(np.abs(c))) if c.size else 0)
        cs.append(c.astype(np.int16))
        bis.append(scales[bi])
    dtype = np.int8 if big <= np.iinfo(np.int8).max else np.int16
    codes = np.zeros((tiles * TILE, n8), dtype)
    bscale = np.zeros((tiles * TILE, n8 // 8), np.float32)
    r0 = 0
    for c, bi in zip(cs, bis):
        codes[r0 : r0 + c.shape[0]] = c
        bscale[r0 : r0 + c.shape[0]] = bi
        r0 += c.shape[0]
    del cs, bis
    codes = np.ascontiguousarray(codes.reshape(tiles, TILE, n8).transpose(0, 2, 1))
    bscale = np.ascontiguousarray(bscale.reshape(tiles, TILE, n8 // 8).transpose(0, 2, 1))
    return LatticeTiles(codes, bscale, rows, n8)


def reference_dot(view: LatticeView, v: np.ndarray) -> np.ndarray:
    """Steps 1–2 of the module docstring (numpy): ``(rows, b)`` float64 for float32 ``v``
    ``(b, n8)``, a chunk of rows at a time from the view's codewords."""
    scales = _scales(view).astype(np.float64)
    n8 = v.shape[1]
    b = v.shape[0]
    out = np.empty((view.rows, b))
    steps = _steps(view)
    for r0 in steps:
        r1 = min(view.rows, r0 + steps.step)
        c, bi = _checked_points(view, r0, r1)
        c3 = c.astype(np.float32).reshape(r1 - r0, n8 // 8, 8)
        sc = scales[bi]
        for t in range(b):
            prod = c3 * v[t].reshape(n8 // 8, 8)[None]
            s = np.zeros(prod.shape[:-1], np.float32)
            for lane in range(8):
                s += prod[..., lane]
            out[r0:r1, t] = np.cumsum(sc * s.astype(np.float64), axis=1)[:, -1] + 0.0
    return out


#: Tiles of the weights multiplied by the kernel (made once per record).
_TILES: weakref.WeakKeyDictionary[Encoded, LatticeTiles] = weakref.WeakKeyDictionary()


def _tiles_of(enc: Encoded, view: LatticeView) -> LatticeTiles:
    lt = _TILES.get(enc)
    if lt is None:
        lt = _TILES[enc] = lattice_tiles(view)
    return lt


def _decoded_dot(view: LatticeView, vp: np.ndarray, k: Any) -> np.ndarray:
    """Dithered records: the float64 decoded blocks, a chunk of rows at a time
    (:func:`mmquant.products.reference.lattice_dot` or its kernel)."""
    dot = k.lattice_dot if k is not None else lattice_dot
    out = np.empty((view.rows, vp.shape[0]))
    step = max(1, _BLOCKS_CHUNK // vp.shape[1])
    for r0 in range(0, view.rows, step):
        r1 = min(view.rows, r0 + step)
        out[r0:r1] = dot(view.blocks(r0, r1), vp)
    return out


def _rotate(view: LatticeView, v: np.ndarray, k: Any) -> np.ndarray:
    """The activations ``v`` (float64 ``(b, n)``) rotated as the record's rows were.

    With the kernels and a randomized Hadamard rotation of a power-of-two length, the fast
    Walsh–Hadamard transform runs compiled (:func:`mmquant.kernels.lattice_products.fwht_rows`,
    the numbers of :meth:`~mmquant.rotations.RandomizedHadamard.apply` bit for bit); otherwise
    the rotation's own ``apply``.
    """
    rot = view.rotation
    n = v.shape[1]
    if k is not None and isinstance(rot, RandomizedHadamard) and n & (n - 1) == 0:
        y = np.ascontiguousarray(v * rot.signs)
        k.fwht_rows(y)
        return y * np.float64(1.0 / np.sqrt(n))
    return rot.apply(v)


def lattice_times(enc: Encoded, view: LatticeView, xr: np.ndarray, backend: str) -> np.ndarray:
    """``Ŵ·xrᵀ`` (rows × b, float64) of a lattice record's view for activations ``xr`` ``(b, n)``.

    The module docstring's three steps (numba kernel or numpy reference, ``backend`` as in
    :func:`mmquant.kernels.resolve`); dithered records through their decoded blocks.
    """
    n, n8 = view.n, -(-view.n // 8) * 8
    b = xr.shape[0]
    v = xr.astype(np.float64)
    if view.mean is not None:  # re-centring needs ⟨x̃, 1⟩: one more activation of ones
        v = np.concatenate([v, np.ones((1, n))])
    k = None if view.points is None else load("lattice_products", backend)
    if view.rotation is not None:
        v = _rotate(view, v, k)
    if view.points is None:
        vp = np.zeros((v.shape[0], n8))
        vp[:, :n] = v
        out = _decoded_dot(view, vp, load("products", backend))
    else:
        vf = np.zeros((v.shape[0], n8), np.float32)
        vf[:, :n] = v
        if k is None:
            out = reference_dot(view, vf)
        else:
            lt = _tiles_of(enc, view)
            out = np.empty((view.rows, vf.shape[0]))
            for t0 in range(0, vf.shape[0], BATCH):  # each column on its own: the same numbers
                vt = vf[t0 : t0 + BATCH]
                out[:, t0 : t0 + vt.shape[0]] = k.lattice_product(lt.codes, lt.bscale, vt, lt.rows)
    out *= view.row_scale[:, None]
    if view.mean is not None:
        ones = out[:, b]
        out = out[:, :b] + (view.mean - ones / n)[:, None] * xr.astype(np.float64).sum(axis=1)
    return out
