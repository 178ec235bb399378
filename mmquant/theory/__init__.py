"""Information-theoretic limits and constants for quantized matrix multiplication."""

from mmquant.theory import scalar  # noqa: F401  (optimal scalar densities, 2603.19559)
from mmquant.theory.matmul_rd import (
    GAMMA_R_STAR,
    R_STAR,
    gamma,
    gamma_inverse,
    shannon_distortion,
    shannon_rate,
)

__all__ = [
    "GAMMA_R_STAR",
    "R_STAR",
    "gamma",
    "gamma_inverse",
    "shannon_distortion",
    "shannon_rate",
]
