"""Error of a quantized matrix product, and its distance to the Gaussian limit Γ(R).

The product is ``C = AᵀB`` with ``A ∈ ℝ^{n×a}``, ``B ∈ ℝ^{n×b}``: ``n`` is the inner dimension. A
quantizer works along the last axis, so ``A`` is quantized as ``Aᵀ`` (rows of length ``n``) and
``B`` as ``Bᵀ``. The normalised product error (THEORY.md §1) is

    D = ‖AᵀB − ÂᵀB̂‖_F² · n / (‖A‖_F² ‖B‖_F²),

which equals ``E‖AᵀB − Ĉ‖_F²/(n·a·b)`` for unit-variance iid entries and is directly comparable with
Γ(R). The gap to the limit at the mean rate ``R = (R_A + R_B)/2`` is reported in dB,
``10·log10(D / Γ(R))``, and in bits, ``R − Γ⁻¹(D)`` (the extra rate spent compared to an optimal
scheme reaching the same error).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mmquant.core import Encoded, Quantizer, get
from mmquant.theory.matmul_rd import gamma, gamma_inverse
from mmquant.validation import as_matrix

__all__ = [
    "ProductError",
    "product_error",
    "product_error_from",
    "matmul",
    "sqnr_db",
    "relative_mse",
    "gap_db",
    "gap_bits",
]


@dataclass(frozen=True)
class ProductError:
    """Error of a quantized product ``ÂᵀB̂`` against ``AᵀB``.

    Attributes
    ----------
    error : float
        Normalised product error ``‖AᵀB − ÂᵀB̂‖_F² · n / (‖A‖_F² ‖B‖_F²)`` (dimensionless).
    sqnr_db : float
        ``10·log10(‖AᵀB‖_F² / ‖AᵀB − ÂᵀB̂‖_F²)`` in dB.
    rate_a, rate_b : float
        Measured rates of the two sides in bits per entry (stored bytes, side information included).
    rate : float
        Mean rate ``(rate_a + rate_b)/2`` in bits per entry.
    gamma : float
        Γ(rate), the Gaussian limit at the mean rate.
    gap_db : float
        ``10·log10(error / Γ(rate))`` in dB (≥ 0 for iid Gaussian data, up to sampling noise).
    gap_bits : float
        ``rate − Γ⁻¹(error)`` in bits per entry.
    spec_a, spec_b : str
        Spec strings of the two quantizers.
    """

    error: float
    sqnr_db: float
    rate_a: float
    rate_b: float
    rate: float
    gamma: float
    gap_db: float
    gap_bits: float
    spec_a: str
    spec_b: str

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form for JSON output."""
        return asdict(self)


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(‖x‖² / ‖x − x̂‖²)`` in dB (inf if exact)."""
    x = np.asarray(reference, np.float64)
    e = float(np.sum((x - np.asarray(approx, np.float64)) ** 2))
    s = float(np.sum(x * x))
    if e == 0.0:
        return math.inf
    if s == 0.0:
        return -math.inf
    return 10.0 * math.log10(s / e)


def relative_mse(reference: np.ndarray, approx: np.ndarray) -> float:
    """ε = ‖x − x̂‖² / ‖x‖² (the relative MSE of THEORY.md §4; dimensionless)."""
    x = np.asarray(reference, np.float64)
    s = float(np.sum(x * x))
    if s == 0.0:
        raise ValueError("relative MSE is undefined for an all-zero reference")
    return float(np.sum((x - np.asarray(approx, np.float64)) ** 2)) / s


def gap_db(error: float, rate: float) -> float:
    """Distance of a normalised product error to Γ(rate), in dB."""
    if error <= 0:
        return -math.inf
    return 10.0 * math.log10(error / float(gamma(rate)))


def gap_bits(error: float, rate: float) -> float:
    """Extra rate over an optimal Gaussian scheme with the same product error, in bits/entry."""
    if error <= 0:
        return -math.inf
    return rate - float(gamma_inverse(error))


def matmul(enc_a: Encoded, enc_b: Encoded) -> np.ndarray:
    """Estimate ``AᵀB`` from the encodings of ``Aᵀ`` and ``Bᵀ`` (each quantized along ``n``).

    Parameters
    ----------
    enc_a, enc_b : Encoded
        Records of ``Aᵀ`` (shape a×n) and ``Bᵀ`` (shape b×n).

    Returns
    -------
    numpy.ndarray
        The a×b estimate ``Âᵀ B̂`` in float64.
    """
    for nm, e in (("enc_a", enc_a), ("enc_b", enc_b)):
        if not isinstance(e, Encoded):
            raise TypeError(f"{nm} must be an Encoded record, got {type(e).__name__}")
        if len(e.shape) != 2:
            raise ValueError(f"{nm} must encode a 2-D matrix, got shape {e.shape}")
    if enc_a.shape[1] != enc_b.shape[1]:
        raise ValueError(
            f"inner dimensions differ: Aᵀ is {enc_a.shape}, Bᵀ is {enc_b.shape} (need equal n)"
        )
    at = get(enc_a.spec).decode(enc_a).astype(np.float64)
    bt = get(enc_b.spec).decode(enc_b).astype(np.float64)
    return at @ bt.T


def _check_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = as_matrix(a, name="A")
    b = as_matrix(b, name="B")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"A is {a.shape} and B is {b.shape}: AᵀB needs the same number of rows n (inner dimension)"
        )
    if not np.any(a) or not np.any(b):
        raise ValueError("A and B must not be all zeros (the normalised error is undefined)")
    return a, b


def product_error_from(
    a: np.ndarray, b: np.ndarray, a_hat: np.ndarray, b_hat: np.ndarray
) -> tuple[float, float]:
    """Normalised product error and SQNR (dB) of ``Â ᵀB̂`` against ``AᵀB`` (all n×· matrices)."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    c = a64.T @ b64
    c_hat = np.asarray(a_hat, np.float64).T @ np.asarray(b_hat, np.float64)
    err = float(np.sum((c - c_hat) ** 2))
    n = a64.shape[0]
    norm = float(np.sum(a64 * a64)) * float(np.sum(b64 * b64))
    return err * n / norm, sqnr_db(c, c_hat)


def product_error(
    a: Any,
    b: Any,
    qa: str | Quantizer,
    qb: str | Quantizer | None = None,
) -> ProductError:
    """Quantize ``A`` and ``B`` and measure the error of ``AᵀB``.

    Parameters
    ----------
    a : array_like, shape (n, a)
        Left matrix; its columns (length ``n``) are quantized.
    b : array_like, shape (n, b)
        Right matrix; same number of rows ``n``.
    qa : str or Quantizer
        Quantizer (or spec string) for ``A``.
    qb : str or Quantizer, optional
        Quantizer for ``B``; defaults to ``qa``.

    Returns
    -------
    ProductError
        Normalised error, SQNR in dB, measured rates and the gap to Γ(R) in dB and bits.

    Examples
    --------
    >>> import numpy as np, mmquant as mq
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.standard_normal((256, 16)), rng.standard_normal((256, 16))
    >>> rep = mq.product_error(A, B, "int:bits=8,group=32")
    >>> round(rep.rate, 2)
    8.5
    """
    a, b = _check_pair(a, b)
    qa = get(qa)
    qb = qa if qb is None else get(qb)
    enc_a = qa.encode(a.T)
    enc_b = qb.encode(b.T)
    a_hat = qa.decode(enc_a).T
    b_hat = qb.decode(enc_b).T
    err, sq = product_error_from(a, b, a_hat, b_hat)
    rate = 0.5 * (enc_a.bits_per_entry + enc_b.bits_per_entry)
    return ProductError(
        error=err,
        sqnr_db=sq,
        rate_a=enc_a.bits_per_entry,
        rate_b=enc_b.bits_per_entry,
        rate=rate,
        gamma=float(gamma(rate)),
        gap_db=gap_db(err, rate),
        gap_bits=gap_bits(err, rate),
        spec_a=qa.spec,
        spec_b=qb.spec,
    )
