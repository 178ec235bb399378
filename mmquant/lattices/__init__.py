"""Nested-lattice codes, one concern per module (imports point down this list).

* :mod:`~mmquant.lattices.voronoi` -- the quantizers ``e8``, ``d4``, ``zn`` (NestQuant): rows to
  blocks, the block code, the MMSE factor, side information; everything that depends on how the
  scale indices are stored is asked of the code's index coder.
* :mod:`~mmquant.lattices.entropy_coded` -- ``e8ec``: E8 points entropy-coded (rANS) instead of
  a Voronoi code.
* :mod:`~mmquant.lattices.scales` -- the scales β (and code sizes) of a multi-scale code: the
  optimiser (:func:`~mmquant.lattices.scales.fit_design`), the N(0, 1) designs
  (:func:`~mmquant.lattices.scales.optimal_design`).
* :mod:`~mmquant.lattices.designs` -- the shipped table of N(0, 1) designs (``designs.json``).
* :mod:`~mmquant.lattices.indexcoders` -- one index coder per way of storing digits and scale
  indices: plain (base-q digits and ⌈log2 k⌉ bits per block), union (one index per block into
  the union of per-scale codes), grouped (one rank per group of blocks under a weight budget).
* :mod:`~mmquant.lattices.indexpack` -- packing of base-q digits and of union-code indices.
* :mod:`~mmquant.lattices.grouping` -- the group code of scale indices: counting, the
  budget-constrained choice, ranks, and the fit of its weights and budget.
* :mod:`~mmquant.lattices.blockcode` -- the multi-scale Voronoi code of (N, 8) blocks: encode
  (membership, projection search, selection rule), decode, dither.
* :mod:`~mmquant.lattices.rows` -- rows to unit-RMS blocks of 8 and back (centring, rotation,
  normalisation), shared by both quantizers.
* :mod:`~mmquant.lattices.chunks` -- chunked processing with the float sums of one pass.
* :mod:`~mmquant.lattices.closest` -- closest points of Z⁸, D4 ⊕ D4 and E8, relevant vectors.

The numba kernels live in :mod:`mmquant.kernels` (``lattice_closest``, ``lattice_block``,
``lattice_groups``) and take what they need of a lattice as arguments.
"""
