"""Trellis-coded quantization: the bitshift trellis (fixed rate) and entropy-coded TCQ.

* :mod:`~mmquant.trellis.codes` -- reconstruction codes of a state (1MAD, 3INST, trained table);
* :mod:`~mmquant.trellis.viterbi` -- the Viterbi search, numpy reference (tail-biting);
* :mod:`~mmquant.trellis.quantizer` -- the registered fixed-rate family ``tcq``;
* :mod:`~mmquant.trellis.entropy_coded` -- the registered entropy-coded family ``tcqec``;
* :mod:`~mmquant.trellis.lut` -- the trained lookup-table codes stored in the package.

The numba kernels are in :mod:`mmquant.kernels.trellis`.
"""
