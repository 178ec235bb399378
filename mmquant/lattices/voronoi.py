"""Nested-lattice (Voronoi) codes with several scales β: the NestQuant quantizers ``e8``, ``d4``, ``zn``.

The quantizer along the last axis of ``x`` (one row = one column of the product's ``A``):

1. rows to unit-RMS blocks of 8 (:mod:`mmquant.lattices.rows`): optional centring (the row mean
   is stored), a seeded randomized Hadamard rotation, zero padding to a multiple of 8, and
   normalisation by the row RMS (stored);
2. with ``dither=true`` a subtractive dither ``u`` uniform over the Voronoi cell of Λ is drawn
   from a stored 32-bit seed (``dither_seed`` side information, derived from ``seed`` and a CRC
   of the data so that A and B get independent dithers). The dither is what the worst-case
   guarantee of arXiv 2410.13780 needs; on rotated data it costs ≈ 0.2 dB of MSE with the
   least-error rule (measured: 0.00608 vs 0.00585 at q = 14, k = 4), so it is off by default;
3. every block is coded by the multi-scale Voronoi code (:mod:`mmquant.lattices.blockcode`: the
   lattice's Voronoi code of size q^8 per scale, the projection search for overloaded blocks,
   the choice of scale by ``rule``), with the scales of
   :func:`~mmquant.lattices.scales.optimal_design` (N(0, 1), shipped precomputed), given ``betas=(...)``, or fitted to the tensor itself with
   ``fit=true`` (:func:`~mmquant.lattices.scales.fit_design` on up to 16384 of its blocks);
4. MMSE scaling: the decoder multiplies ẑ by ``α = ⟨z, ẑ⟩/‖ẑ‖²`` (one float32 per tensor).

The digits and scale indices are stored by the code's index coder
(:mod:`mmquant.lattices.indexcoders`): base-q digits and ``⌈log2 k⌉`` bits per block for one q
(q = 14, k = 4: 1 + 59/21 + 2/8 = 4.0595 bits per entry, i.e. log2 14 + 2/8 + 0.002), one index
into the union of the k codes for per-scale code sizes (``q=(...)`` or ``mixed=true``), or one
rank per group of blocks (``group=G``). The β list travels as side information (``betas``, k
float32: 128 bits per tensor at k = 4, and the code uses these stored values), and so do the
coder's own parameters (``qs``; ``weights`` and ``budget``), so that a stored code decodes the
same even if the optimiser changes. Rate = the measured bytes, side information included.

References
----------
.. [1] O. Ordentlich, Y. Polyanskiy, "Optimal quantization for matrix multiplication",
   arXiv:2410.13780.
.. [2] S. Savkin, E. Porat, O. Ordentlich, Y. Polyanskiy, "NestQuant: nested lattice quantization
   for matrix products and LLMs", arXiv:2502.09720.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from mmquant.core import Encoded, Quantizer, match_rate, register
from mmquant.lattices.blockcode import (
    RULES,
    VoronoiBlocks,
    dither,
    voronoi_decode_blocks,
    voronoi_encode_blocks,
    voronoi_encode_grouped,
)
from mmquant.lattices.chunks import pairwise_blocks
from mmquant.lattices.closest import lattice
from mmquant.lattices.grouping import group_max
from mmquant.lattices.indexcoders import IndexCoder, UnionIndex, index_coder
from mmquant.lattices.indexpack import (
    base_q_nbytes,
    digit_bits,
    pack_base_q,
    pack_union,
    union_bits,
    union_nbytes,
    union_size,
    unpack_base_q,
    unpack_union,
)
from mmquant.lattices.rows import finish_rows, prepare_rows, store_float
from mmquant.lattices.scales import (
    SCALES_MAX,
    Design,
    check_design,
    fit_design,
    optimal_design,
)
from mmquant.layout import Layout, side_array
from mmquant.validation import check_choice, check_float, check_int

__all__ = [
    "E8Voronoi",
    "D4Voronoi",
    "ZnVoronoi",
    # re-exported from the modules that hold them (their historical place)
    "VoronoiBlocks",
    "Design",
    "optimal_design",
    "fit_design",
    "voronoi_encode_blocks",
    "voronoi_encode_grouped",
    "voronoi_decode_blocks",
    "digit_bits",
    "pack_base_q",
    "unpack_base_q",
    "base_q_nbytes",
    "union_size",
    "union_bits",
    "pack_union",
    "unpack_union",
    "union_nbytes",
    "dither",
    "group_max",
    "pairwise_blocks",
    "prepare_rows",
    "store_float",
    "finish_rows",
]


@dataclass(frozen=True)
class _VoronoiQuantizer(Quantizer):
    """Shared implementation; the lattice is a class attribute of each registered family.

    Parameters
    ----------
    q : int or tuple of int
        Voronoi code size: q^8 points per scale, log2 q bits per entry (2 ≤ q ≤ 256); or one
        code size per scale (a union code, ``log2(Σ q_j^8)/8`` bits per entry).
    betas : int or tuple of float
        Number k of scales (optimised for N(0, 1) by :func:`optimal_design`, or fitted to the
        data with ``fit``), or the scales themselves, increasing (units of the rows' RMS);
        1 to :data:`~mmquant.lattices.scales.SCALES_MAX` = 16, and at most
        :data:`~mmquant.lattices.scales.NO_OVERLOAD_SCALES_MAX` = 8 optimised for the
        no-overload rule.
    rule : str
        ``"least-error"`` (try every β) or ``"no-overload"`` (smallest β that does not overload).
    dither : bool
        Subtractive dither uniform over the Voronoi cell, from a stored seed.
    rotate : bool
        Seeded randomized Hadamard rotation of each row first.
    center : bool
        Subtract each row's mean (stored) first.
    mmse : bool
        Scale the estimate by the MMSE factor α (stored).
    search : bool
        Code overloaded blocks by an in-code projection rather than their wrapped point.
    fit : bool
        Fit the k scales to this tensor's blocks (stored as side information).
    mixed : bool
        Let the optimiser give each scale the code size q − 1, q or q + 1 (a union code,
        :func:`fit_design`); the chosen sizes are stored as side information.
    group : int
        Code the scale indices of this many consecutive blocks jointly under a weight budget
        (:mod:`mmquant.lattices.grouping`; weights and budget chosen by the optimiser and stored);
        1 sends ⌈log2 k⌉ bits per block. At most :func:`group_max` (k) = ⌊64/⌈log2 k⌉⌋ blocks
        (32 for k = 3, 4).
    seed : int
        Seed of the rotation and of the dither.
    """

    lattice_name: ClassVar[str] = "e8"

    q: int | tuple[int, ...] = 14
    betas: int | tuple[float, ...] = 4
    rule: str = "least-error"
    dither: bool = False
    rotate: bool = True
    center: bool = False
    mmse: bool = True
    search: bool = True
    fit: bool = False
    mixed: bool = False
    group: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.betas, tuple):
            if not 1 <= len(self.betas) <= SCALES_MAX:
                raise ValueError(
                    f"betas must hold 1 to SCALES_MAX = {SCALES_MAX} scales, got {len(self.betas)}"
                )
            for b in self.betas:
                check_float(b, "each beta", lo=0.0, lo_open=True)
            if list(self.betas) != sorted(set(self.betas)):
                raise ValueError(f"betas must be strictly increasing, got {self.betas}")
        else:
            check_int(self.betas, "betas", lo=1, hi=SCALES_MAX)
        check_choice(self.rule, "rule", RULES)
        given = isinstance(self.betas, tuple)
        coder = index_coder(self.q, self.k, mixed=self.mixed, group=self.group)
        coder.check(self.rule, scales_given=given)
        if self.fit and given:
            raise ValueError("fit=true fits the scales to the data: give their number (betas=k)")
        check_design(self.k, self.rule, optimised=not given)
        check_int(self.seed, "seed", lo=0, hi=2**32 - 1)
        object.__setattr__(self, "_coder", coder)

    @property
    def k(self) -> int:
        """Number of scales."""
        return len(self.betas) if isinstance(self.betas, tuple) else self.betas

    @property
    def coder(self) -> IndexCoder:
        """How the digits and scale indices are stored (:mod:`mmquant.lattices.indexcoders`)."""
        return self._coder  # type: ignore[attr-defined]

    @property
    def union(self) -> bool:
        """The codes are a union of per-scale codes (one index per block, :func:`pack_union`)."""
        return isinstance(self.coder, UnionIndex)

    @property
    def design(self) -> Design:
        """Code sizes and scales in use (from :func:`optimal_design` where not given)."""
        if isinstance(self.betas, tuple):
            return Design(self.coder.sizes, self.betas)
        return optimal_design(
            self.lattice_name,
            self.q,
            self.k,
            self.rule,
            self.dither,
            self.search,
            self.mixed,
            self.group,
        )

    @property
    def scales(self) -> tuple[float, ...]:
        """The β list in use."""
        return self.design.betas

    def nominal_rate(self, n: int | None = None) -> float:
        """Bits per entry of the codes (no byte padding), plus the float16 row norm over ``n``.

        ``a + W/J + ⌈log2 k⌉/8`` for one q; :func:`union_bits` / 8 for a union code;
        ``a + W/J + ⌈log2 |A(G, W)|⌉/(8G)`` with groups of G blocks
        (:meth:`mmquant.lattices.indexcoders.IndexCoder.nominal_bits`).
        """
        return self.coder.nominal_bits(lambda: self.design) + (16 / n if n else 0.0)

    @classmethod
    def defaults(cls) -> list[Quantizer]:
        """q = 14, k = 4: scale indices block by block, and in groups of 32."""
        return [cls(q=14, betas=4), cls(q=14, betas=4, group=32)]

    @classmethod
    def candidates(cls, rate: float) -> list[Quantizer]:
        """k = 4 codes of every q = 2..64, scale indices block by block (their rate needs no
        design)."""
        return [cls(q=v, betas=4) for v in range(2, 65)]

    @classmethod
    def variants(cls, rate: float | None = None) -> list[Quantizer]:
        """:meth:`defaults`, or the code :func:`~mmquant.core.match_rate` picks for ``rate``
        among :meth:`candidates`, each with its sibling whose scale indices go in groups of 32
        (a little below that rate; its rate needs the scale design, computed only for it)."""
        if rate is None:
            return cls.defaults()
        return [
            s for q in match_rate(cls.candidates(rate), rate) for s in (q, replace(q, group=32))
        ]

    def _encode(self, x: np.ndarray) -> Encoded:
        lat = lattice(self.lattice_name)
        coder = self.coder
        shape = x.shape
        u = None
        if self.dither:  # first: its transient product is not on top of the blocks z
            ds = zlib.crc32(np.ascontiguousarray(x), self.seed) & 0xFFFFFFFF
            u = dither(math.prod(shape[:-1]) * (-(-shape[-1] // 8)), lat, ds)
        z, side = prepare_rows(x, rotate=self.rotate, center=self.center, seed=self.seed)
        nb = z.shape[0]
        if self.dither:
            side["dither_seed"] = np.array([ds], np.uint32)
        if self.fit:  # fitted to (up to 16384 evenly spaced) blocks of this tensor
            pick = np.unique(np.linspace(0, nb - 1, min(nb, 16384)).astype(int))
            sample_u = None if u is None else u[pick]
            design = fit_design(
                z[pick],
                lat,
                self.q,
                self.k,
                self.rule,
                sample_u,
                self.search,
                self.mixed,
                self.group,
            )
        else:
            design = self.design
        side["betas"] = np.asarray(design.betas, dtype=np.float32)  # what the decoder reads
        betas = side["betas"].astype(np.float64)  # the code uses the stored (float32) values
        side.update(coder.side(design))
        # The blocks are coded a chunk at a time (pairwise_blocks: the float sums are those of
        # numpy.sum over all blocks); kept whole are only the digits (one byte per entry, q ≤ 256)
        # and the scale indices.
        digits = np.empty((nb, 8), np.uint8)
        beta_index = np.empty(nb, np.int64)
        overloads = [0]

        def leaf(b0: int, b1: int) -> tuple[float, ...]:
            res = coder.code_blocks(z, u, b0, b1, lat, betas, design, self.rule, self.search)
            digits[b0:b1] = res.digits
            beta_index[b0:b1] = res.beta_index
            overloads[0] += int(np.count_nonzero(res.overload))
            zc, est = z[b0:b1], res.estimate
            return np.sum(zc * est), np.sum(est * est), np.sum(zc * zc)

        num, den, energy = pairwise_blocks(nb, leaf)
        alpha = float(num) / float(den) if (self.mmse and den > 0) else 1.0
        side["alpha"] = np.array([alpha], np.float32)
        codes = coder.pack(digits, beta_index, design)
        counts = np.bincount(beta_index, minlength=betas.size)
        # Σ(z − αẑ)² from the three sums (a diagnostic: not stored)
        sq_err = float(energy) - 2.0 * alpha * float(num) + alpha * alpha * float(den)
        stats = {
            "overload_blocks": float(overloads[0]),
            "overload_fraction": overloads[0] / nb,
            "mse_normalised": max(sq_err, 0.0) / z.size,
            **{f"beta{i}_fraction": float(c / nb) for i, c in enumerate(counts)},
        }
        return Encoded(
            codes=codes,
            side=side,
            shape=shape,
            spec=self.spec,
            seed=self.seed,
            stats=stats,
        )

    def layout(self, shape: tuple[int, ...]) -> Layout:
        """Codes of ``nb = rows·⌈n/8⌉`` blocks and the side arrays of the module docstring.

        Codes: :func:`base_q_nbytes` plus ``⌈log2 k⌉`` bits per block (``k > 1``), or
        :func:`union_nbytes` of the given ``q`` list; with ``mixed`` (sizes stored in ``qs``) or
        ``group > 1`` (ranks sized by the stored ``weights`` and ``budget``) a range, checked
        exactly by the decoder (:meth:`IndexCoder.codes_layout`). Side: ``norm`` (and ``mean``
        with ``center``) float16 or float32 per row, ``betas`` k float32, ``alpha`` one float32,
        ``dither_seed`` one uint32 (with ``dither``), ``qs`` k uint16 (union), ``weights`` k
        uint8 and ``budget`` one uint16 (``group > 1``). Seed: the spec's ``seed``.
        """
        rows = math.prod(shape[:-1])
        nb = rows * (-(-shape[-1] // 8))
        f = ("float16", "float32")
        side = {
            "norm": side_array(f, rows),
            "betas": side_array("float32", self.k),
            "alpha": side_array("float32", 1),
        }
        if self.center:
            side["mean"] = side_array(f, rows)
        if self.dither:
            side["dither_seed"] = side_array("uint32", 1)
        side.update(self.coder.side_layout())
        return Layout(self.coder.codes_layout(nb), side, seed=self.seed)

    def _check_stored(self, enc: Encoded) -> None:
        """The exact code length implied by stored values (a mixed union code's ``qs``, a group
        code's ``weights`` and ``budget``), once those are checked."""
        nb = math.prod(enc.shape[:-1]) * (-(-enc.shape[-1] // 8))
        found = self.coder.stored_nbytes(enc.side, nb)
        if found is None:
            return
        want, what = found
        if enc.codes.size != want:
            raise ValueError(
                f"record codes hold {enc.codes.size} bytes; {self.spec!r} with {what} stores "
                f"exactly {want} bytes for shape {enc.shape}"
            )

    def _decode(self, enc: Encoded) -> np.ndarray:
        lat = lattice(self.lattice_name)
        shape = enc.shape
        nb = math.prod(shape[:-1]) * (-(-shape[-1] // 8))
        k = self.k
        betas = np.asarray(enc.side.get("betas", np.zeros(0)), dtype=np.float64)
        if betas.shape != (k,) or not np.all(np.isfinite(betas)) or np.any(betas <= 0):
            raise ValueError(
                f"corrupt side information: 'betas' must hold {k} positive finite scales, "
                f"got {betas.tolist()}"
            )
        digits, bi, qs = self.coder.unpack(enc.codes, enc.side, nb)
        u = None
        if self.dither:
            u = dither(nb, lat, int(enc.side["dither_seed"][0]))
        zh = voronoi_decode_blocks(digits, bi, lat, qs, betas, u)
        del digits, bi, u  # (their memory is not needed by finish_rows)
        zh *= float(enc.side["alpha"][0])
        return finish_rows(
            zh, enc.side, shape, rotate=self.rotate, center=self.center, seed=self.seed
        )


@register("e8")
@dataclass(frozen=True)
class E8Voronoi(_VoronoiQuantizer):
    """E8 Voronoi code with q^8 points and k scales β (NestQuant), rate log2 q + log2(k)/8."""

    lattice_name: ClassVar[str] = "e8"
    description: ClassVar[str] = "E8 nested-lattice (Voronoi) code, k scales, Hadamard rotation"


@register("d4")
@dataclass(frozen=True)
class D4Voronoi(_VoronoiQuantizer):
    """D4 ⊕ D4 Voronoi code (one β per 8 entries), for comparison with E8."""

    lattice_name: ClassVar[str] = "d4"
    description: ClassVar[str] = "D4 nested-lattice (Voronoi) code, k scales, Hadamard rotation"


@register("zn")
@dataclass(frozen=True)
class ZnVoronoi(_VoronoiQuantizer):
    """Z⁸ Voronoi code (uniform scalar modulo q, one β per 8 entries), for comparison."""

    lattice_name: ClassVar[str] = "zn"
    description: ClassVar[str] = "Z^n Voronoi code (scalar modulo q), k scales, Hadamard rotation"
