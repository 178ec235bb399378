"""How a Voronoi code's digits and scale indices become bytes: one index coder per way.

Every block of 8 entries is coded by its base-q digits (in ``[0, q_j)``) and the index j of its
scale β_j (:mod:`mmquant.lattices.blockcode`). A multi-scale code sends these in one of three
ways, each an :class:`IndexCoder`:

* :class:`PlainIndex` -- one code size q: the digits packed in base q
  (:func:`~mmquant.lattices.indexpack.pack_base_q`), then the scale indices in ``⌈log2 k⌉`` bits
  each (none for k = 1); ``a + W/J + ⌈log2 k⌉/8`` bits per entry.
* :class:`UnionIndex` -- one code size q_j per scale (given as ``q=(...)``, or chosen within
  q ± 1 by the optimiser with ``mixed``): the k codes form one codebook of ``Σ q_j^8`` points and
  each block is one index into it (:func:`~mmquant.lattices.indexpack.pack_union`),
  ``log2(Σ q_j^8)/8`` bits per entry; the sizes are stored (side array ``qs``).
* :class:`GroupedIndex` -- one q; the scales of G consecutive blocks are chosen jointly under a
  weight budget and sent as one rank per group (:mod:`mmquant.lattices.grouping`); the weights
  and the budget are stored (side arrays ``weights``, ``budget``).

:func:`index_coder` picks the coder for a spec's ``(q, k, mixed, group)``. The coder answers every
question whose answer depends on that choice, so that the quantizer
(:mod:`mmquant.lattices.voronoi`) and the optimiser (:func:`mmquant.lattices.scales.fit_design`)
ask it instead of branching: the spec's checks, the nominal rate, the side arrays and the code
length (layout), how blocks are coded and packed, how stored codes are read back and checked, and
what the optimiser may vary (code sizes, and the group weights and budget).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmquant.lattices import grouping
from mmquant.lattices.blockcode import (
    VoronoiBlocks,
    code_sizes,
    voronoi_encode_blocks,
    voronoi_encode_grouped,
)
from mmquant.lattices.closest import Lattice
from mmquant.lattices.indexpack import (
    UNION_MAX,
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
from mmquant.layout import SideArray, side_array
from mmquant.packing import pack, packed_nbytes, packed_wide_nbytes, unpack
from mmquant.validation import check_int

if TYPE_CHECKING:
    from mmquant.lattices.scales import Design

__all__ = ["IndexCoder", "PlainIndex", "UnionIndex", "GroupedIndex", "index_coder"]

#: (code size, grid index) of every scale, as the optimiser of :mod:`mmquant.lattices.scales`
#: holds a candidate code.
Selection = list[tuple[int, int]]


def _check_consumed(used: int, size: int) -> None:
    if used != size:
        raise ValueError(
            f"corrupt codes: {size} bytes stored, the blocks of the record take {used}"
        )


@dataclass(frozen=True)
class IndexCoder(abc.ABC):
    """How digits and scale indices of a code with ``k`` scales are chosen, stored and read.

    Subclasses validate their parameters on construction (``ValueError`` naming the problem).
    """

    k: int

    # -- the spec ------------------------------------------------------------------------------
    def check(self, rule: str, scales_given: bool) -> None:
        """Refuse a selection ``rule`` or given scales (``betas=(...)``) this coder cannot use.

        Every coder takes either rule and given scales unless it says otherwise.
        """
        return None

    @property
    @abc.abstractmethod
    def sizes(self) -> tuple[int, ...]:
        """The code size of every scale before any optimisation (those of given scales)."""

    # -- what the optimiser (fit_design) may vary ----------------------------------------------
    @property
    def size_choices(self) -> tuple[int, ...]:
        """Code sizes the optimiser may give each scale (empty: the sizes are fixed)."""
        return ()

    @property
    def ordered(self) -> bool:
        """The scales keep the order of the given code sizes (a given per-scale list)."""
        return False

    def rate_factor(self, qs: list[int]) -> float:
        """``4^R`` of the code with sizes ``qs`` if the optimiser chooses the sizes, else 1.

        The optimiser minimises ``D·rate_factor``: the gap to Shannon's ``D(R) = 4^{−R}`` when
        the rate depends on its choice, the distortion alone when it does not.
        """
        return 1.0

    def fit(
        self, sel: Selection, grids: dict[int, np.ndarray], errs: dict[int, np.ndarray]
    ) -> tuple[Selection, tuple[int, ...], int]:
        """Last step of the optimiser: (scales, group weights, budget); none by default."""
        return sel, (), 0

    # -- rate and layout -----------------------------------------------------------------------
    @abc.abstractmethod
    def nominal_bits(self, design: Callable[[], Design]) -> float:
        """Bits per entry of the codes (no side information or byte padding).

        ``design()`` gives the code's design; it is called only by coders whose rate depends on
        it (an optimised union code's sizes, a group code's weights and budget), since computing
        a design that is not shipped takes seconds.
        """

    def side_layout(self) -> dict[str, SideArray]:
        """The side arrays this coder stores (:mod:`mmquant.layout`)."""
        return {}

    @abc.abstractmethod
    def codes_layout(self, n_blocks: int) -> int | tuple[int, int | None]:
        """Bytes of the codes of ``n_blocks`` blocks: exact, or a range checked on decoding."""

    def stored_nbytes(
        self, side: Mapping[str, np.ndarray], n_blocks: int
    ) -> tuple[int, str] | None:
        """Exact code length implied by stored side values, and what implies it (or ``None``
        when :meth:`codes_layout` is exact). Raises ``ValueError`` on invalid stored values."""
        return None

    # -- encoding ------------------------------------------------------------------------------
    def side(self, design: Design) -> dict[str, np.ndarray]:
        """Side arrays of ``design`` to store (what :meth:`side_layout` declares)."""
        return {}

    def code_blocks(
        self,
        z: np.ndarray,
        u: np.ndarray | None,
        b0: int,
        b1: int,
        lat: Lattice,
        betas: np.ndarray,
        design: Design,
        rule: str,
        search: bool,
    ) -> VoronoiBlocks:
        """Code the blocks ``z[b0:b1]`` (``u``: the dither of all blocks, or ``None``)."""
        return voronoi_encode_blocks(
            z[b0:b1],
            lat,
            np.asarray(design.qs, np.int64),
            betas,
            None if u is None else u[b0:b1],
            rule,
            search=search,
        )

    @abc.abstractmethod
    def pack(self, digits: np.ndarray, beta_index: np.ndarray, design: Design) -> np.ndarray:
        """The codes (uint8) of all blocks: (N, 8) digits and (N,) scale indices."""

    # -- decoding ------------------------------------------------------------------------------
    @abc.abstractmethod
    def unpack(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], n_blocks: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """((N, 8) digits, (N,) scale indices, (k,) code sizes) read from the stored record.

        Raises ``ValueError`` on corrupt codes or side values.
        """


def _check_q(q: object) -> int:
    return check_int(q, "q", lo=2, hi=256)


@dataclass(frozen=True)
class PlainIndex(IndexCoder):
    """One code size q; the scale indices in ``⌈log2 k⌉`` bits per block after the digits."""

    q: int = 14

    def __post_init__(self) -> None:
        _check_q(self.q)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (int(self.q),) * self.k

    @property
    def index_bits(self) -> int:
        """Bits of one block's scale index."""
        return math.ceil(math.log2(self.k)) if self.k > 1 else 0

    def nominal_bits(self, design: Callable[[], Design]) -> float:
        """``a + W/J + ⌈log2 k⌉/8`` (whatever the scales)."""
        return digit_bits(int(self.q)) + (self.index_bits / 8 if self.k > 1 else 0.0)

    def codes_layout(self, n_blocks: int) -> int:
        base = base_q_nbytes(int(self.q), n_blocks)
        return base + packed_nbytes(n_blocks, self.index_bits) if self.k > 1 else base

    def pack(self, digits: np.ndarray, beta_index: np.ndarray, design: Design) -> np.ndarray:
        parts = [pack_base_q(digits, int(self.q))]
        if self.k > 1:
            parts.append(pack(beta_index, self.index_bits))
        return np.concatenate(parts)

    def unpack(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], n_blocks: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        digits, pos = unpack_base_q(codes, int(self.q), n_blocks)
        if self.k > 1:
            bi = unpack(codes[pos:], self.index_bits, n_blocks).astype(np.int64)
            if np.any(bi >= self.k):
                raise ValueError(f"corrupt codes: a β index is not below {self.k}")
        else:
            bi = np.zeros(n_blocks, np.int64)
        return digits, bi, np.full(self.k, int(self.q), np.int64)


@dataclass(frozen=True)
class UnionIndex(IndexCoder):
    """One code size per scale (given, or chosen within q ± 1 with ``mixed``); one index per
    block into the union of the k codes."""

    q: int | tuple[int, ...] = 14
    mixed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.q, tuple):
            for v in self.q:
                check_int(v, "each q", lo=2, hi=256)
            if len(self.q) != self.k:
                raise ValueError(f"q must give one code size per scale: {len(self.q)} for {self.k}")
            if self.mixed:
                raise ValueError("mixed=true chooses the code sizes: give q as one integer")
        else:
            _check_q(self.q)
        most = self.q if isinstance(self.q, tuple) else (min(self.q + 1, 256),) * self.k
        if union_size(most) > UNION_MAX:
            raise ValueError(
                f"union code too large: Σ q_j^8 = {union_size(most)} exceeds 2^62 "
                "(use smaller code sizes or fewer scales)"
            )

    def check(self, rule: str, scales_given: bool) -> None:
        if self.mixed and scales_given:
            raise ValueError("mixed=true optimises the scales with the sizes: give betas=k")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(v) for v in code_sizes(self.q, self.k))

    @property
    def size_choices(self) -> tuple[int, ...]:
        if not self.mixed:
            return ()
        q = int(self.q)
        return tuple(sorted({max(2, q - 1), q, min(256, q + 1)}))

    @property
    def ordered(self) -> bool:
        return not self.mixed

    def rate_factor(self, qs: list[int]) -> float:
        return 4.0 ** (math.log2(union_size(qs)) / 8) if self.mixed else 1.0

    def nominal_bits(self, design: Callable[[], Design]) -> float:
        """:func:`~mmquant.lattices.indexpack.union_bits` / 8 of the given or optimised sizes."""
        return union_bits(self.q if isinstance(self.q, tuple) else design().qs) / 8

    def side_layout(self) -> dict[str, SideArray]:
        return {"qs": side_array("uint16", self.k)}

    def codes_layout(self, n_blocks: int) -> int | tuple[int, int | None]:
        return union_nbytes(self.q, n_blocks) if isinstance(self.q, tuple) else (0, None)

    def stored_qs(self, side: Mapping[str, np.ndarray]) -> np.ndarray:
        """The per-scale code sizes, read from the side information and checked."""
        k = self.k
        qs = np.asarray(side.get("qs", np.zeros(0)), dtype=np.int64)
        if isinstance(self.q, tuple):
            ok = qs.tolist() == list(self.q)
        else:
            ok = qs.shape == (k,) and bool(np.all(np.abs(qs - self.q) <= 1))
        if not ok or qs.shape != (k,) or np.any(qs < 2):
            want = list(self.q) if isinstance(self.q, tuple) else f"{k} sizes within q ± 1"
            raise ValueError(f"corrupt side information: 'qs' must hold {want}, got {qs.tolist()}")
        return qs

    def stored_nbytes(
        self, side: Mapping[str, np.ndarray], n_blocks: int
    ) -> tuple[int, str] | None:
        if isinstance(self.q, tuple):
            return None
        return union_nbytes(self.stored_qs(side), n_blocks), "its code sizes 'qs'"

    def side(self, design: Design) -> dict[str, np.ndarray]:
        return {"qs": np.asarray(design.qs, np.int64).astype(np.uint16)}

    def pack(self, digits: np.ndarray, beta_index: np.ndarray, design: Design) -> np.ndarray:
        return pack_union(digits, beta_index, np.asarray(design.qs, np.int64))

    def unpack(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], n_blocks: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qs = self.stored_qs(side)
        digits, bi, pos = unpack_union(codes, qs, n_blocks)
        _check_consumed(pos, codes.size)
        return digits, bi, qs


@dataclass(frozen=True)
class GroupedIndex(IndexCoder):
    """One q; the scale indices of ``group`` consecutive blocks as one rank under a weight
    budget (:mod:`mmquant.lattices.grouping`)."""

    q: int | tuple[int, ...] = 14
    group: int = 2
    mixed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.q, tuple) or self.mixed:
            raise ValueError(
                "group > 1 needs one q, the least-error rule and betas=k (the optimiser "
                "chooses the scales with the group's weights)"
            )
        _check_q(self.q)
        if not 2 <= self.k <= grouping.GROUP_MAX_SCALES:
            raise ValueError(
                f"group > 1 needs 2 to {grouping.GROUP_MAX_SCALES} scales, got {self.k}"
            )
        if self.group > grouping.group_max(self.k):
            raise ValueError(
                f"group={self.group} with {self.k} scales: at most {grouping.group_max(self.k)} "
                f"blocks per group (group·⌈log2 k⌉ ≤ GROUP_BITS_MAX = {grouping.GROUP_BITS_MAX}, "
                "so that a group's index sequences have 63-bit ranks)"
            )

    def check(self, rule: str, scales_given: bool) -> None:
        if rule != "least-error" or scales_given:
            raise ValueError(
                "group > 1 needs one q, the least-error rule and betas=k (the optimiser "
                "chooses the scales with the group's weights)"
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        return (int(self.q),) * self.k

    def fit(
        self, sel: Selection, grids: dict[int, np.ndarray], errs: dict[int, np.ndarray]
    ) -> tuple[Selection, tuple[int, ...], int]:
        """The weights and budget, fitted with the scales (:func:`mmquant.lattices.grouping.fit`)."""
        return grouping.fit(sel, grids, errs, self.group)

    def nominal_bits(self, design: Callable[[], Design]) -> float:
        """``a + W/J + ⌈log2 |A(G, W)|⌉/(8G)`` with the design's weights and budget."""
        g, d = self.group, design()
        return digit_bits(int(self.q)) + grouping.group_bits(d.weights, g, d.budget, g) / (8 * g)

    def side_layout(self) -> dict[str, SideArray]:
        return {"weights": side_array("uint8", self.k), "budget": side_array("uint16", 1)}

    def codes_layout(self, n_blocks: int) -> tuple[int, int | None]:
        base = base_q_nbytes(int(self.q), n_blocks)
        # at most 63 bits per group rank (counts stay below 2^63)
        most = sum(packed_wide_nbytes(m, 63) for _, m in grouping._runs(n_blocks, self.group))
        return (base, base + most)

    def stored_grouping(self, side: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], int]:
        """The group weights and budget, read from the side information and checked."""
        w = np.asarray(side.get("weights", np.zeros(0)), dtype=np.int64)
        b = np.asarray(side.get("budget", np.zeros(0)), dtype=np.int64)
        if w.shape != (self.k,) or b.shape != (1,):
            raise ValueError(
                f"corrupt side information: 'weights' must hold {self.k} integers and 'budget' "
                f"one, got {w.tolist()} and {b.tolist()}"
            )
        weights, budget = tuple(int(v) for v in w), int(b[0])
        ok = (
            min(weights) >= 0
            and max(weights) <= grouping.WEIGHT_MAX
            and min(weights) <= budget < self.group * max(weights)
        )
        if not ok or grouping.count(weights, self.group, budget) >= grouping.MAX_COUNT:
            raise ValueError(
                f"corrupt side information: weights {weights} and budget {budget} do not define "
                f"a group code of {self.group} blocks"
            )
        return weights, budget

    def stored_nbytes(self, side: Mapping[str, np.ndarray], n_blocks: int) -> tuple[int, str]:
        w, budget = self.stored_grouping(side)
        want = base_q_nbytes(int(self.q), n_blocks) + grouping.packed_nbytes(
            w, self.group, budget, n_blocks
        )
        return want, "its 'weights' and 'budget'"

    def side(self, design: Design) -> dict[str, np.ndarray]:
        return {
            "weights": np.asarray(design.weights, np.uint8),
            "budget": np.array([design.budget], np.uint16),
        }

    def code_blocks(
        self,
        z: np.ndarray,
        u: np.ndarray | None,
        b0: int,
        b1: int,
        lat: Lattice,
        betas: np.ndarray,
        design: Design,
        rule: str,
        search: bool,
    ) -> VoronoiBlocks:
        """Whole groups ``[e0, e1) ⊇ [b0, b1)`` are coded (a group's choice is its own)."""
        g, nb = self.group, z.shape[0]
        e0, e1 = b0 // g * g, min(nb, -(-b1 // g) * g)
        res = voronoi_encode_grouped(
            z[e0:e1],
            lat,
            int(self.q),
            betas,
            None if u is None else u[e0:e1],
            design.weights,
            g,
            design.budget,
            search,
        )
        return res.part(slice(b0 - e0, b1 - e0))

    def pack(self, digits: np.ndarray, beta_index: np.ndarray, design: Design) -> np.ndarray:
        w, budget, g = design.weights, design.budget, self.group
        ranks = grouping.rank(beta_index, w, g, budget)
        return np.concatenate(
            [
                pack_base_q(digits, int(self.q)),
                grouping.pack(ranks, w, g, budget, digits.shape[0]),
            ]
        )

    def unpack(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], n_blocks: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = int(self.q)
        digits, pos = unpack_base_q(codes, q, n_blocks)
        w, budget = self.stored_grouping(side)
        ranks, used = grouping.unpack(codes[pos:], w, self.group, budget, n_blocks)
        _check_consumed(pos + used, codes.size)
        bi = grouping.unrank(ranks, w, self.group, budget, n_blocks)
        return digits, bi, np.full(self.k, q, np.int64)


def index_coder(
    q: int | tuple[int, ...], k: int, *, mixed: bool = False, group: int = 1
) -> IndexCoder:
    """The index coder of a code with sizes ``q`` (one, or one per scale), ``k`` scales, code
    sizes chosen by the optimiser (``mixed``) and scale indices coded in groups of ``group``.

    ``group > 1`` gives :class:`GroupedIndex`, a per-scale ``q`` or ``mixed``
    :class:`UnionIndex`, anything else :class:`PlainIndex`. Raises ``ValueError`` when the
    parameters define no code (the message names the limit).
    """
    group = check_int(group, "group", lo=1, hi=64)
    if group > 1:
        return GroupedIndex(k, q, group, mixed)
    if isinstance(q, tuple) or mixed:
        return UnionIndex(k, q, mixed)
    return PlainIndex(k, q)
