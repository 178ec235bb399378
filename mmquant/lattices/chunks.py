"""Working through large arrays a chunk of blocks at a time, with the sums of one pass.

The encoders and decoders of :mod:`mmquant.lattices` never hold more than a chunk of their float64
temporaries: :func:`chunk_entries` sets the step, and :func:`pairwise_blocks` adds per-chunk sums
exactly as ``numpy.sum`` adds the whole array, so that what the coders compute from such sums (the
MMSE factor α) does not depend on the chunks.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CHUNK_ENTRIES", "CHUNK_ENTRIES_MAX", "chunk_entries", "pairwise_blocks"]

#: Entries handled per step by the encoders and decoders (a multiple of 8; see
#: :func:`pairwise_blocks`): at least this many, and for large arrays up to
#: :data:`CHUNK_ENTRIES_MAX` so that there are about 16 steps (every step of the coder starts
#: the parallel numba kernels anew, which costs milliseconds on a busy machine).
CHUNK_ENTRIES = 1 << 16
CHUNK_ENTRIES_MAX = 1 << 20


def chunk_entries(total: int) -> int:
    """Entries per step for an array of ``total`` entries (a multiple of 8)."""
    return max(CHUNK_ENTRIES, min(CHUNK_ENTRIES_MAX, total // 16)) // 8 * 8


def pairwise_blocks(
    n_blocks: int, leaf: Callable[[int, int], tuple[float, ...]], size: int | None = None
) -> tuple[float, ...]:
    """Sums over (n_blocks, 8) arrays, bit for bit as ``numpy.sum`` adds them, a chunk at a time.

    ``numpy.sum`` of a contiguous float64 array of ``n`` entries (n > 128) adds the sums of its
    first ``n₂ = ⌊n/2⌋ − (⌊n/2⌋ mod 8)`` and of its other entries, recursively (pairwise
    summation). This walks the same tree down to parts of at most ``size`` entries (whole
    blocks of 8, since every split is a multiple of 8; default :func:`chunk_entries`), calls
    ``leaf(b0, b1)`` on the blocks of each part in order (which returns ``numpy.sum`` of that
    part of each array, e.g. ``np.sum(z[b0:b1] * e[b0:b1])``) and adds the results as
    ``numpy.sum`` would. So the
    encoders get the same float sums (e.g. the MMSE factor α) without building the whole
    arrays; a test checks the identity against ``numpy.sum``. Parts of up to 128 entries are
    added by numpy with 8 partial sums, not split: ``size`` is raised to 128 at least.
    """
    size = max(chunk_entries(8 * n_blocks) if size is None else size, 128)

    def walk(lo: int, hi: int) -> tuple[float, ...]:
        n = hi - lo
        if n <= size:
            return leaf(lo // 8, hi // 8)
        n2 = n // 2
        n2 -= n2 % 8
        left = walk(lo, lo + n2)
        right = walk(lo + n2, hi)
        return tuple(a + b for a, b in zip(left, right))

    return walk(0, 8 * n_blocks)
