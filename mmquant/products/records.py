"""What the product kernels need to know about each family's records, in one place.

The product kernels never see an :class:`~mmquant.core.Encoded` record: this adapter turns a
checked record into a plain view of its codes (:class:`BlockView` for the scalar and block
formats, :class:`LatticeView` for the nested-lattice codes). **All** knowledge of side-information
key names, of where element tables live and of lattice internals is here, so that a change of the
record layouts (renamed side keys, formats moved into a shared block engine, the lattice code split
into modules) is followed by editing this one module.

Every view is made from a record that passed its quantizer's :meth:`~mmquant.core.Quantizer.check`
(exact code length, side arrays of the declared dtypes and shapes) and the checks of stored
values that the family's decoder makes (negative or non-finite scales, E8M0 NaN, E4M3 NaN block
scales, β lists), so a kernel indexing the views reads inside its buffers.

Block view (every scalar and block family): entry ``j`` of row ``i`` has the code at bits
``[(i·n + j)·w, (i·n + j + 1)·w)`` of ``codes`` (:mod:`mmquant.packing`), and decodes to
``fl32(table[code] · scale[i, j // g])`` (``+ offset[i, j // g]`` for affine INT), exactly what the
family's decoder computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.core import Encoded, Quantizer, get

__all__ = ["BlockView", "LatticeView", "block_view", "has_view", "lattice_view", "IMPORTED"]

#: The internals of other subpackages this adapter uses (reported for the integrator).
IMPORTED = (
    "mmquant.formats: Quantizer.block_format() (engine.BlockFormat: elements.table, bits, group, "
    "scale.scales(side)), engine.group_size, compander.DataCompander, elements.CodebookElements, "
    "scales.RowRMS",
    "mmquant.lattices.voronoi: _VoronoiQuantizer (.coder.unpack, .k), voronoi_decode_blocks, "
    "dither",
    "mmquant.lattices.closest: lattice",
    "mmquant.rotations: rotation",
)


@dataclass(frozen=True)
class BlockView:
    """Codes of a scalar or block format as the product kernels read them.

    Attributes
    ----------
    codes : numpy.ndarray
        The record's packed codes (uint8, :mod:`mmquant.packing` layout over the whole matrix).
    width : int
        Bits per code, 1..8.
    table : numpy.ndarray
        float32 value of each of the ``2**width`` codes (in units of the scale).
    scale : numpy.ndarray
        float32 scale of every group, shape ``(rows, groups)``.
    offset : numpy.ndarray or None
        float32 offset of every group (affine INT), same shape; ``None`` otherwise.
    group : int
        Entries per group along a row (the last group of a row may be shorter).
    rows, n : int
        The matrix shape.
    unit : float
        A float32 factor the scales are (rounded) multiples of: NVFP4's tensor scale
        (``S = fl32(E4M3 value · unit)``), else 1. The tile layout uses it to keep the scales in
        half precision (:mod:`mmquant.products.tiles`).
    """

    codes: np.ndarray
    width: int
    table: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    group: int
    rows: int
    n: int
    unit: float = 1.0


@dataclass(frozen=True)
class LatticeView:
    """A nested-lattice record as the product path reads it.

    Attributes
    ----------
    rows, n : int
        The matrix shape.
    row_scale : numpy.ndarray
        float64 factor of every row, ``norm · α`` (the per-row RMS times the MMSE factor).
    mean : numpy.ndarray or None
        float64 row means (``center=true``), else ``None``.
    rotation : object or None
        The seeded rotation (``apply`` rotates rows of the other operand), ``None`` without one.
    blocks : callable
        ``blocks(r0, r1)`` returns the float64 ``(r1 − r0, ⌈n/8⌉·8)`` blocks ``β(y + u)`` of rows
        ``r0..r1-1`` (decoded a chunk of rows at a time, from the index coders of the record).
    dithered : bool
        Whether the view holds a float64 dither of every block (then it is not worth keeping).
    points : callable or None
        ``points(r0, r1)`` returns the codewords of rows ``r0..r1-1`` as integers in units of
        :attr:`unit` -- ``(r1 − r0, ⌈n/8⌉·8)`` int64 ``y / unit`` (``y`` the Voronoi-cell point
        of every block, before β and the dither) -- and the ``(r1 − r0, ⌈n/8⌉)`` β indices of
        their blocks (each below ``k``); ``None`` for dithered records.
    unit : float
        The step of the codewords' coordinates: ½ for E8 (half-integers), 1 for D4 and Zⁿ.
    betas : numpy.ndarray or None
        The record's float64 β list (checked: ``k`` positive finite values).
    """

    rows: int
    n: int
    row_scale: np.ndarray
    mean: np.ndarray | None
    rotation: Any
    blocks: Any
    dithered: bool = False
    points: Any = None
    unit: float = 1.0
    betas: np.ndarray | None = None


def _quantizer(enc: Encoded) -> Quantizer:
    if not isinstance(enc, Encoded):
        raise TypeError(f"expected an Encoded record, got {type(enc).__name__}")
    q = get(enc.spec)
    q.check(enc)  # sizes, dtypes and shapes before anything indexes the buffers
    if len(enc.shape) != 2:
        raise ValueError(f"a product needs a record of a 2-D matrix, got shape {enc.shape}")
    return q


def _block_format(q: Quantizer) -> Any:
    """The engine's :class:`~mmquant.formats.engine.BlockFormat` of a scalar/block family."""
    from mmquant.formats import compander
    from mmquant.formats.elements import CodebookElements
    from mmquant.formats.engine import BlockFormat
    from mmquant.formats.scales import RowRMS

    if isinstance(q, compander.DataCompander):  # its table is the record's 'points'
        el = CodebookElements(np.zeros(2**q.bits, np.float32), np.zeros(2**q.bits - 1, np.float32))
        return BlockFormat(el, RowRMS(q.scale_dtype), 0, "compander", q.spec)
    make = getattr(q, "block_format", None)
    return make() if callable(make) else None


def has_view(q: Quantizer) -> bool:
    """Whether records of ``q`` have a :class:`BlockView` or a :class:`LatticeView`."""
    from mmquant.lattices import voronoi

    return _block_format(q) is not None or isinstance(q, voronoi._VoronoiQuantizer)


def block_view(enc: Encoded) -> BlockView | None:
    """The :class:`BlockView` of a record, or ``None`` for a family without one.

    Every family built on the block engine (:mod:`mmquant.formats.engine`: int, fp, MX, NVFP4,
    NF4, the row-RMS codebooks) has one: its element table, and the scales (and offsets) its scale
    rule reads back from the side arrays, with that rule's checks of stored values.

    Raises
    ------
    TypeError
        ``enc`` is not an :class:`Encoded`.
    ValueError
        The record is malformed (its quantizer's :meth:`check`), not 2-D, or its stored scales
        are corrupt (negative, non-finite, NaN codes).
    """
    from mmquant.formats.engine import group_size

    q = _quantizer(enc)
    bf = _block_format(q)
    if bf is None:
        return None
    rows, n = enc.shape
    scale, offset = bf.scale.scales(enc.side)
    if "points" in enc.side:  # a codebook stored in the record
        table = np.asarray(enc.side["points"]).astype(np.float32)
        if table.size != 2**bf.bits or not np.all(np.isfinite(table)):
            raise ValueError("corrupt side information: 'points' must be 2^bits finite values")
    else:
        table = bf.elements.table
    if bf.group == -1:  # one scale for the tensor: the same scale on every row
        scale = np.full((rows, 1), scale.reshape(-1)[0], np.float32)
        if offset is not None:
            offset = np.full((rows, 1), offset.reshape(-1)[0], np.float32)
        group = n
    else:
        group = group_size(n, bf.group)
    group = max(1, min(group, n))
    ng = -(-n // group)
    scale = np.ascontiguousarray(scale, np.float32).reshape(rows, ng)
    if offset is not None:
        offset = np.ascontiguousarray(offset, np.float32).reshape(rows, ng)
    table = np.ascontiguousarray(table, np.float32)
    unit = 1.0
    if "tensor_scale" in enc.side:  # NVFP4 (checked finite and ≥ 0 by its scale rule)
        unit = float(np.asarray(enc.side["tensor_scale"], np.float32).reshape(-1)[0])
    return BlockView(enc.codes, int(bf.bits), table, scale, offset, group, rows, n, unit)


def lattice_view(enc: Encoded) -> LatticeView | None:
    """The :class:`LatticeView` of a nested-lattice record, or ``None`` for other families.

    The index coders (base-q digits, β indices, union and group codes) are decoded here with the
    lattice package's own functions, a chunk of rows at a time, inside :attr:`LatticeView.blocks`.

    Raises
    ------
    TypeError, ValueError
        As :func:`block_view` (corrupt β lists, norms, β indices, code lengths).
    """
    from mmquant.lattices import voronoi
    from mmquant.lattices.closest import lattice
    from mmquant.rotations import rotation

    q = _quantizer(enc)
    if not isinstance(q, voronoi._VoronoiQuantizer):
        return None
    rows, n = enc.shape
    n8 = -(-n // 8) * 8
    bpr = n8 // 8  # blocks per row
    nb = rows * bpr
    k = q.k
    betas = np.asarray(enc.side["betas"], dtype=np.float64)
    if betas.shape != (k,) or not np.all(np.isfinite(betas)) or np.any(betas <= 0):
        raise ValueError(
            f"corrupt side information: 'betas' must hold {k} positive finite scales, "
            f"got {betas.tolist()}"
        )
    norm = enc.side["norm"]
    if norm.size and not (np.all(np.isfinite(norm)) and float(np.min(norm)) >= 0):
        raise ValueError("corrupt side information: 'norm' holds a negative or non-finite RMS")
    alpha = float(enc.side["alpha"][0])
    if not math.isfinite(alpha):
        raise ValueError("corrupt side information: 'alpha' is not finite")
    # the record's index coder (plain, union or grouped): digits (nb, 8) and β indices (nb,)
    digits, bi, qs = q.coder.unpack(enc.codes, enc.side, nb)
    # kept compact (the view of a weight is kept for its next products): one byte per digit
    digits = digits.astype(np.min_scalar_type(max(int(np.max(qs)) - 1, 0)))
    bi = np.asarray(bi).astype(np.min_scalar_type(max(k - 1, 0)))
    lat = lattice(q.lattice_name)
    # the dither (dither=true only) is drawn for every block at once, as the decoder does
    u_all = voronoi.dither(nb, lat, int(enc.side["dither_seed"][0])) if q.dither else None

    def blocks(r0: int, r1: int) -> np.ndarray:
        b0, b1 = r0 * bpr, r1 * bpr
        u = None if u_all is None else u_all[b0:b1]
        zh = voronoi.voronoi_decode_blocks(digits[b0:b1], bi[b0:b1], lat, qs, betas, u)
        return zh.reshape(r1 - r0, n8)

    unit = 0.5 if q.lattice_name == "e8" else 1.0

    def points(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        b0, b1 = r0 * bpr, r1 * bpr
        ones = np.ones(k)  # y itself: every β 1, no dither (exact: integers or half-integers)
        y = voronoi.voronoi_decode_blocks(digits[b0:b1], bi[b0:b1], lat, qs, ones, None)
        c = np.rint(y / unit).astype(np.int64)
        return c.reshape(r1 - r0, n8), bi[b0:b1].astype(np.int64).reshape(r1 - r0, bpr)

    row_scale = norm.astype(np.float64) * alpha
    mean = enc.side["mean"].astype(np.float64) if q.center else None
    rot = rotation(n, q.seed) if q.rotate else None
    dithered = u_all is not None
    return LatticeView(
        rows, n, row_scale, mean, rot, blocks, dithered, None if dithered else points, unit, betas
    )
