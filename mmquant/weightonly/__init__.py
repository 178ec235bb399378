"""Weight-only quantization with a calibration covariance: RTN, GPTQ/LDLQ, WaterSIC and E8-SIC.

Every method takes ``W`` (``a×n``, a layer ``y = Wx``) and ``Σ_X = E[xxᵀ]`` (``n×n``) and returns a
:class:`WeightQuant`: the reconstruction, the integer codes, steps and rescalers, the measured rate
of the real bitstream with its side information, the empirical entropy and the WMSE
``tr((W−Ŵ)Σ_X(W−Ŵ)ᵀ)/(a·n)``. :func:`waterfill_gap_bits` compares it with the waterfilling limit.

The same methods are registered quantizers (:mod:`~mmquant.weightonly.quantizers`):
``mmquant.get("watersic:rate=3").encode(W, sigma=Σ_X)`` returns an :class:`~mmquant.core.Encoded`
record (bitstream and side information) that ``mmquant.save`` writes and ``decode`` rebuilds
without Σ_X; ``gptq:rotate=true`` is GPTQ after a random rotation. ``e8sic`` is WaterSIC's loop
with every column quantized on the lattice E8 (:mod:`~mmquant.weightonly.vsic`), ``tcqsic`` with
every column quantized by entropy-coded TCQ (:mod:`~mmquant.weightonly.tsic`).

References: arXiv 2601.17187 (high-rate theory, WaterSIC analysis), WaterSIC arXiv 2603.04956.
"""

from mmquant.weightonly.covariance import check_problem, prepare_covariance, wmse
from mmquant.weightonly.gptq import gptq
from mmquant.weightonly.metrics import METHODS, quantize_layer, waterfill_gap_bits
from mmquant.weightonly.result import WeightQuant, decode
from mmquant.weightonly.rtn import rtn
from mmquant.weightonly.tsic import tcqsic
from mmquant.weightonly.vsic import e8sic, vector_sic
from mmquant.weightonly.watersic import watersic

__all__ = [
    "METHODS",
    "WeightQuant",
    "check_problem",
    "decode",
    "e8sic",
    "waterfill_gap_bits",
    "gptq",
    "prepare_covariance",
    "quantize_layer",
    "rtn",
    "tcqsic",
    "vector_sic",
    "watersic",
    "wmse",
]
