"""Matrix products straight from the codes: no float matrix of the quantized operand is built.

* :func:`times` -- a record ``Ŵ`` (m×n) times a float vector or matrix: ``Ŵ·x`` for ``x`` of shape
  ``(n,)`` or ``(n, b)`` (GEMV and small-batch GEMM);
* :func:`linear` -- ``x·Ŵᵀ`` for activations ``x`` of shape ``(..., n)`` (the layout of
  ``torch.nn.functional.linear``; float32 out), for inference from the codes;
* :func:`product` -- codes × codes: ``Â·B̂ᵀ`` from records of ``A`` (a×n) and ``B`` (b×n), as in
  W4A4/W4A8 or Q·Kᵀ: the operand with fewer rows (the activations) is decoded -- or, for two
  ``int`` records with the same groups, read as integers -- the other is multiplied from its codes;
* :func:`has_kernel` -- whether a record's family has a product path.

Families: the scalar and block formats (``int`` symmetric and affine, ``fp``, ``mxfp4/6/8``,
``mxint8``, ``nvfp4``, ``nf4``, the row-RMS codebooks ``compander``, ``lloydmax``, ``uniform``,
``datacompander``): fused unpack–look-up–accumulate from a row-tiled copy of the codes
(:mod:`mmquant.products.tiles`, made once per weight; 4-bit codes through 16-entry tables of
products in SIMD registers), the scale applied once per group; codes × codes of two ``int``
records as exact integer group sums; the nested-lattice codes (``e8``, ``d4``, ``zn``): the
other operand rotated once, the integer codewords (one byte per entry, made once per weight
from the digits) accumulated block by block with the β of each block and the row factor applied
to sums (:mod:`mmquant.products.lattice`). The numbers are those of
decode-then-multiply within float32 accumulation error; the numba kernels
(:mod:`mmquant.kernels.products`) and the numpy reference (:mod:`mmquant.products.reference`) agree
bit for bit (``MMQUANT_KERNELS`` or ``backend=`` chooses). Records are checked by their
quantizer's :meth:`~mmquant.core.Quantizer.check` before any kernel reads them.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import numpy as np

from mmquant.core import Encoded, get
from mmquant.kernels import load, resolve
from mmquant.packing import unpack
from mmquant.products import reference
from mmquant.products.lattice import lattice_times
from mmquant.products.records import BlockView, LatticeView, block_view, has_view, lattice_view
from mmquant.products.tiles import TileView, integer_base, tile_view
from mmquant.validation import as_real_array

__all__ = ["times", "linear", "product", "has_kernel"]


def has_kernel(enc: Encoded) -> bool:
    """Whether the family of ``enc`` has a product path (without checking the record)."""
    if not isinstance(enc, Encoded):
        raise TypeError(f"expected an Encoded record, got {type(enc).__name__}")
    if enc in _VIEWS:
        return True
    return len(enc.shape) == 2 and _has_view(enc.spec)


@functools.lru_cache(maxsize=512)
def _has_view(spec: str) -> bool:
    """:func:`has_view` of a spec string's quantizer (parsing a spec costs ~0.3 ms: kept)."""
    return has_view(get(spec))


#: Views of the records seen recently (a weight multiplied again is not checked or unpacked again;
#: a block view holds float32 copies of the side arrays, and any code byte indexes inside its
#: table; a lattice view its digits and β indices, one byte each; dithered ones are not kept).
_VIEWS: weakref.WeakKeyDictionary[Encoded, BlockView | LatticeView] = weakref.WeakKeyDictionary()


def _view(enc: Encoded) -> BlockView | LatticeView:
    v: BlockView | LatticeView | None = _VIEWS.get(enc)
    if v is not None:
        return v
    v = block_view(enc)
    if v is None:
        v = lattice_view(enc)
    if v is not None and not (isinstance(v, LatticeView) and v.dithered):
        _VIEWS[enc] = v
    if v is None:
        raise ValueError(
            f"{enc.spec!r} has no product from the codes (has_kernel is false); decode it and "
            "multiply instead"
        )
    return v


def _activations(x: Any, n: int, name: str) -> np.ndarray:
    arr = as_real_array(x, name=name, min_ndim=1)
    if arr.shape[-1] != n:
        raise ValueError(f"{name} has shape {arr.shape}: its last axis must have length n = {n}")
    return arr


#: Row-tiled layouts of the weights multiplied by the numba kernels (made once per record).
_TILES: weakref.WeakKeyDictionary[Encoded, TileView] = weakref.WeakKeyDictionary()


def _tiles(enc: Encoded, view: BlockView) -> TileView:
    tv = _TILES.get(enc)
    if tv is None:
        tv = _TILES[enc] = tile_view(view)
    return tv


def _block_times(
    enc: Encoded, view: BlockView, x: np.ndarray, u: np.ndarray | None, k: Any
) -> np.ndarray:
    """Block view times float32 activations ``x`` ``(b, n)`` with group scales ``u`` or ones."""
    x = np.ascontiguousarray(x, np.float32)
    if u is None:
        u = np.ones((x.shape[0], view.scale.shape[1]))
    vsum = None
    if view.offset is not None:
        asums = reference.activation_sums if k is None else k.activation_sums
        vsum = asums(x, view.group)
    if k is None:
        return reference.block_product(view, x, u, vsum)
    return k.block_product(_tiles(enc, view), x, u, vsum)


def _finite(out: np.ndarray, enc: Encoded) -> np.ndarray:
    if not np.all(np.isfinite(out)):
        raise ValueError(
            f"the product from the codes of {enc.spec!r} is not finite: the record's codes are "
            "corrupt (a code outside the element format) or the operands overflow"
        )
    return out


def _times_rows(enc: Encoded, xr: np.ndarray, backend: str) -> np.ndarray:
    """``Ŵ·xrᵀ`` (rows × b, float64) for activations ``xr`` of shape ``(b, n)``."""
    view = _view(enc)
    k = load("products", backend)
    if isinstance(view, BlockView):
        return _finite(_block_times(enc, view, xr, None, k), enc)
    return _finite(lattice_times(enc, view, xr, backend), enc)


#: One-activation products bound to a weight (:func:`mmquant.kernels.products.gemv_plan`, or
#: ``False``: the record has none), made on the first GEMV from the numba backend.
_PLANS: weakref.WeakKeyDictionary[Encoded, Any] = weakref.WeakKeyDictionary()


def _gemv(enc: Encoded, x: np.ndarray, backend: str) -> np.ndarray | None:
    """``Ŵ·x`` ``(m, 1)`` for one float32/float64 activation ``x`` of ``n`` entries (the callers
    check its shape), by a plan made once per weight; ``None`` where none applies (the numpy
    backend, a family without a SIMD loop, another dtype): the general path then runs.

    The lean path of a GEMV: the numbers are those of the general path, but a call is a few
    Python operations and one kernel dispatch. After a float32 GEMV has flushed the caches the
    general path's two dozen numpy calls cost 0.1–0.2 ms, a third of a 4096² product. ``x`` is
    checked by the product itself: a NaN or infinity in ``x`` makes every output row non-finite,
    and only then is ``x`` examined, for the error message.
    """
    if (x.dtype != np.float32 and x.dtype != np.float64) or resolve(backend) != "numba":
        return None
    plan = _PLANS.get(enc)
    if plan is None:
        view = _view(enc)
        plan = False
        if isinstance(view, BlockView):
            plan = load("products", backend).gemv_plan(_tiles(enc, view)) or False
        _PLANS[enc] = plan
    if plan is False:
        return None
    if x.dtype == np.float32:
        out, bad = plan(np.ascontiguousarray(x.reshape(-1)))
    else:
        with np.errstate(over="ignore"):  # an overflow is reported below, by name
            out, bad = plan(x.reshape(-1).astype(np.float32))
    if bad:
        as_real_array(x, name="x")  # raises for a NaN or infinity in x
        _finite(out, enc)
    return out


#: Largest |value| of a group sum of integer products that float32 adds exactly.
_EXACT = 2.0**24


def _integer_codes(enc_w: Encoded, enc_x: Encoded, backend: str) -> np.ndarray | None:
    """``Ŵ·X̂ᵀ`` with the activations' integer codes as ``x`` and their scales as ``u``.

    Taken when both records have integer levels (symmetric ``int``; the activations without an
    offset), the same groups, and every group sum of products of levels is exact in float32: the
    product is then that of the exact decoded values (W4A4, W8A8, Q·Kᵀ of int codes); ``None``
    otherwise (the activations are decoded instead).
    """
    vw, vx = _view(enc_w), _view(enc_x)
    if not (isinstance(vw, BlockView) and isinstance(vx, BlockView)):
        return None
    if vx.offset is not None or integer_base(vx.table) is None or vx.group != vw.group:
        return None
    if integer_base(vw.table) is None:
        return None
    tmax = float(np.max(np.abs(vw.table))) * float(np.max(np.abs(vx.table)))
    if vw.group * tmax >= _EXACT:
        return None
    xq = vx.table[unpack(vx.codes, vx.width, vx.rows * vx.n)].reshape(vx.rows, vx.n)
    u = vx.scale.astype(np.float64)
    return _finite(_block_times(enc_w, vw, xq, u, load("products", backend)), enc_w)


def times(enc: Encoded, x: Any, *, backend: str = "auto") -> np.ndarray:
    """``Ŵ·x`` from the codes of ``Ŵ`` (an m×n record) and a float ``x``.

    Parameters
    ----------
    enc : Encoded
        Record of an m×n matrix of a family with a product path (:func:`has_kernel`).
    x : array_like
        ``(n,)`` vector or ``(n, b)`` matrix (finite; used as float32 by the block kernels).
    backend : {"auto", "numpy", "numba"}
        Kernels or numpy reference (:func:`mmquant.kernels.resolve`); the results are identical.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` or ``(m, b)`` float64.

    Raises
    ------
    TypeError, ValueError
        A malformed or corrupt record, a family without a product path, ``x`` of the wrong shape
        or not finite.
    """
    if not isinstance(enc, Encoded):
        raise TypeError(f"expected an Encoded record, got {type(enc).__name__}")
    if len(enc.shape) != 2:
        raise ValueError(f"a product needs a record of a 2-D matrix, got shape {enc.shape}")
    if type(x) is np.ndarray and x.ndim and x.shape[0] == x.size and x.size == enc.shape[1]:
        if (out := _gemv(enc, x, backend)) is not None:
            return out[:, 0] if x.ndim == 1 else out
    arr = as_real_array(x, name="x", min_ndim=1)
    if arr.ndim > 2 or arr.shape[0] != enc.shape[1]:
        raise ValueError(
            f"x has shape {arr.shape}; expected ({enc.shape[1]},) or ({enc.shape[1]}, b)"
        )
    xr = arr.reshape(arr.shape[0], -1).T
    out = _times_rows(enc, xr, backend)
    return out[:, 0] if arr.ndim == 1 else out


def linear(x: Any, enc: Encoded, *, backend: str = "auto") -> np.ndarray:
    """``x·Ŵᵀ`` for activations ``x`` of shape ``(..., n)`` and a record of ``Ŵ`` (m×n).

    The entry point of a quantized ``nn.Linear`` on CPU (no bias): returns float32 of shape
    ``(..., m)``. See :func:`times`.
    """
    if not isinstance(enc, Encoded):
        raise TypeError(f"expected an Encoded record, got {type(enc).__name__}")
    if len(enc.shape) != 2:
        raise ValueError(f"a product needs a record of a 2-D matrix, got shape {enc.shape}")
    if type(x) is np.ndarray and x.ndim and x.shape[-1] == x.size == enc.shape[1]:
        if (out := _gemv(enc, x, backend)) is not None:
            return out.astype(np.float32).reshape((*x.shape[:-1], enc.shape[0]))
    arr = _activations(x, enc.shape[1], "x")
    xr = arr.reshape(-1, enc.shape[1])
    out = _times_rows(enc, xr, backend).T.astype(np.float32)
    return out.reshape((*arr.shape[:-1], enc.shape[0]))


def product(enc_a: Encoded, enc_b: Encoded, *, backend: str = "auto") -> np.ndarray:
    """``Â·B̂ᵀ`` (a×b, float64) from records of ``A`` (a×n) and ``B`` (b×n).

    The record with a product path and more rows is multiplied from its codes; the other (the
    activations: a vector or a few rows) is decoded. Raises ``ValueError`` when neither has a
    product path (:func:`has_kernel`), or the inner dimensions differ.
    """
    for nm, e in (("enc_a", enc_a), ("enc_b", enc_b)):
        if not isinstance(e, Encoded):
            raise TypeError(f"{nm} must be an Encoded record, got {type(e).__name__}")
        if len(e.shape) != 2:
            raise ValueError(f"{nm} must encode a 2-D matrix, got shape {e.shape}")
    if enc_a.shape[1] != enc_b.shape[1]:
        raise ValueError(f"inner dimensions differ: A is {enc_a.shape}, B is {enc_b.shape}")
    ka, kb = has_kernel(enc_a), has_kernel(enc_b)
    if not (ka or kb):
        raise ValueError(f"neither {enc_a.spec!r} nor {enc_b.spec!r} has a product path")
    if ka and (not kb or enc_a.shape[0] >= enc_b.shape[0]):
        if kb and (out := _integer_codes(enc_a, enc_b, backend)) is not None:
            return out
        return _times_rows(enc_a, get(enc_b.spec).decode(enc_b), backend)
    if ka and (out := _integer_codes(enc_b, enc_a, backend)) is not None:
        return out.T
    return _times_rows(enc_b, get(enc_a.spec).decode(enc_a), backend).T
