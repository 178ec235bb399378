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
    "ExactProduct",
    "exact_product",
    "product_error_of",
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
        Normalised product error ``‖AᵀB − ÂᵀB̂‖_F² · n / (‖A‖_F² ‖B‖_F²)`` (dimensionless; 0 for
        an exact product, ``inf`` if a reconstruction overflows).
    sqnr_db : float
        ``10·log10(‖AᵀB‖_F² / ‖AᵀB − ÂᵀB̂‖_F²)`` in dB.
    rate_a, rate_b : float
        Measured rates of the two sides in bits per entry (stored bytes, side information included).
    rate : float
        Mean rate ``(rate_a + rate_b)/2`` in bits per entry.
    gamma : float
        Γ(rate), the Gaussian limit at the mean rate.
    gap_db : float
        ``10·log10(error / Γ(rate))`` in dB (≥ 0 for iid Gaussian data, up to sampling noise);
        ``-inf`` for an exact product, ``inf`` when Γ(rate) underflows (see :func:`gap_db`).
    gap_bits : float
        ``rate − Γ⁻¹(error)`` in bits per entry (``-inf`` for an exact product).

    No field is computed by a division that can fail: zero, constant, orthogonal, tiny or huge
    data give the values above, never ``ZeroDivisionError``.
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
    m = _pow2_scale(x)  # (the ratio is scale-invariant: no under/overflow)
    with np.errstate(over="ignore", invalid="ignore"):
        d = (x - np.asarray(approx, np.float64)) / m
        e = float(np.sum(d * d))
    s = float(np.sum((x / m) ** 2))
    if math.isnan(e):
        e = math.inf
    if e == 0.0:
        return math.inf
    if s == 0.0 or math.isinf(e):
        return -math.inf
    return 10.0 * math.log10(s / e)


def _pow2_scale(x: np.ndarray) -> float:
    """The power of two just above ``max|x|`` (1 for zero or non-finite ``x``).

    Dividing by a power of two is exact (away from the subnormals), so scale-invariant ratios
    computed on ``x / m`` equal those on ``x`` bit for bit whenever the latter did not under- or
    overflow.
    """
    m = float(np.abs(x).max()) if x.size else 0.0
    if not 0 < m < math.inf:
        return 1.0
    return math.ldexp(1.0, math.frexp(m)[1])


def relative_mse(reference: np.ndarray, approx: np.ndarray) -> float:
    """ε = ‖x − x̂‖² / ‖x‖² (the relative MSE of THEORY.md §4; dimensionless)."""
    x = np.asarray(reference, np.float64)
    s = float(np.sum(x * x))
    if s == 0.0:
        raise ValueError("relative MSE is undefined for an all-zero reference")
    return float(np.sum((x - np.asarray(approx, np.float64)) ** 2)) / s


def gap_db(error: float, rate: float) -> float:
    """Distance of a normalised product error to Γ(rate), in dB.

    ``-inf`` for a zero error; ``+inf`` for an infinite error, or when Γ(rate) underflows to 0
    (rates above ~537 bits/entry, e.g. a tiny matrix with a large codebook as side information);
    NaN for a NaN error. Never raises for a finite rate ≥ 0.
    """
    if math.isnan(error):
        return math.nan
    if error <= 0:
        return -math.inf
    g = float(gamma(rate))
    if math.isinf(error) or g <= 0:
        return math.inf
    return 10.0 * (math.log10(error) - math.log10(g))


def gap_bits(error: float, rate: float) -> float:
    """Extra rate over an optimal Gaussian scheme with the same product error, in bits/entry.

    ``-inf`` for a zero error; ``rate`` for an error ≥ 1 (including ``inf``: rate 0 achieves it);
    NaN for a NaN error.
    """
    if math.isnan(error):
        return math.nan
    if error <= 0:
        return -math.inf
    if error >= 1:
        return float(rate)
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

    Notes
    -----
    When either family has a product path (:func:`mmquant.products.has_kernel`: the block formats
    and the lattice codes), the larger record is multiplied straight from its codes
    (:func:`mmquant.products.product`: equal to decode-then-multiply within float32 accumulation
    error); otherwise both are decoded and multiplied in float64.
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
    from mmquant.products import has_kernel, product

    if has_kernel(enc_a) or has_kernel(enc_b):
        return product(enc_a, enc_b)
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


@dataclass(frozen=True)
class ExactProduct:
    """The exact product ``AᵀB`` of a pair, computed once and reused for every quantizer.

    Built by :func:`exact_product`; holds the checked float64 matrices divided by the powers of
    two just above ``max|A|`` and ``max|B|`` (see :func:`product_error_from`), those powers, the
    scaled product and ``‖A‖_F²‖B‖_F²`` of the scaled matrices.
    """

    a: np.ndarray
    b: np.ndarray
    scale_a: float
    scale_b: float
    product: np.ndarray
    norm: float


def exact_product(a: Any, b: Any) -> ExactProduct:
    """Check a pair (n×a, n×b; finite, not all zeros) and compute its exact product once.

    Raises
    ------
    ValueError
        ``A`` or ``B`` all zeros, non-finite, or shapes that do not match.
    """
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[0] != b64.shape[0]:
        raise ValueError(f"A is {a64.shape} and B is {b64.shape}: need n×a and n×b matrices")
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        raise ValueError("A and B must be finite")
    if not (a64.any() and b64.any()):
        raise ValueError("A and B must not be all zeros (the normalised error is undefined)")
    ma, mb = _pow2_scale(a64), _pow2_scale(b64)
    a64, b64 = a64 / ma, b64 / mb
    norm = float(np.sum(a64 * a64)) * float(np.sum(b64 * b64))  # ≥ 1/16: max|entries| ≥ 1/2
    return ExactProduct(a64, b64, ma, mb, a64.T @ b64, norm)


def product_error_from(
    a: np.ndarray | ExactProduct,
    b: np.ndarray | None,
    a_hat: np.ndarray,
    b_hat: np.ndarray,
) -> tuple[float, float]:
    """Normalised product error and SQNR (dB) of ``Â ᵀB̂`` against ``AᵀB`` (all n×· matrices).

    Both quantities are invariant to scaling ``A, Â`` and ``B, B̂``, so they are computed on the
    matrices divided by the powers of two just above ``max|A|`` and ``max|B|`` (exact: the same
    numbers as without scaling on ordinary data): tiny (1e-200) or huge (1e200) data neither
    underflows to a zero norm nor overflows. A zero product ``AᵀB`` gives an SQNR of ``-inf``
    (``+inf`` when ``ÂᵀB̂`` is zero as well); an overflowing reconstruction gives ``inf``.

    ``a`` may be an :class:`ExactProduct` (``b`` is then ``None``): the exact product is not
    recomputed, as when many quantizers are measured on the same pair.

    Raises
    ------
    ValueError
        ``A`` or ``B`` all zeros (the normalised error divides by ``‖A‖_F²‖B‖_F²``), non-finite
        ``A`` or ``B``, or shapes that do not match.
    """
    ex = a if isinstance(a, ExactProduct) else exact_product(a, b)
    ah = np.asarray(a_hat, np.float64)
    bh = np.asarray(b_hat, np.float64)
    if ah.shape != ex.a.shape or bh.shape != ex.b.shape:
        raise ValueError(
            f"reconstructions {ah.shape}, {bh.shape} differ from A {ex.a.shape}, B {ex.b.shape}"
        )
    ah, bh = ah / ex.scale_a, bh / ex.scale_b
    with np.errstate(over="ignore", invalid="ignore"):
        c_hat = ah.T @ bh
        diff = ex.product - c_hat
        err = float(np.sum(diff * diff))
    if math.isnan(err):
        err = math.inf  # inf − inf in an overflowing reconstruction
    return err * ex.a.shape[0] / ex.norm, sqnr_db(ex.product, c_hat)


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
    return product_error_of(a, b, qa.encode(a.T), qb.encode(b.T))


def product_error_of(
    a: Any,
    b: Any,
    enc_a: Encoded,
    enc_b: Encoded,
    *,
    exact: ExactProduct | None = None,
) -> ProductError:
    """Error of ``AᵀB`` from records of ``Aᵀ`` and ``Bᵀ`` that are already encoded.

    The one place where a product error is measured: :func:`product_error` encodes and calls it,
    ``mmquant compare`` times its encodes and calls it.

    Parameters
    ----------
    a, b : array_like, shapes (n, a) and (n, b)
        The original matrices.
    enc_a, enc_b : Encoded
        Records of ``Aᵀ`` and ``Bᵀ`` (quantized along ``n``); each is decoded with the quantizer
        its spec names, and its measured rate (bits per entry) is the stored bytes'.
    exact : ExactProduct, optional
        ``exact_product(a, b)``, computed once when the same pair is measured many times.

    Returns
    -------
    ProductError
        As :func:`product_error`.
    """
    a, b = _check_pair(a, b)
    for nm, e, m in (("enc_a", enc_a, a), ("enc_b", enc_b, b)):
        if not isinstance(e, Encoded):
            raise TypeError(f"{nm} must be an Encoded record, got {type(e).__name__}")
        if e.shape != m.T.shape:
            raise ValueError(f"{nm} encodes shape {e.shape}, expected {m.T.shape} (the transpose)")
    qa, qb = get(enc_a.spec), get(enc_b.spec)
    if exact is None:
        exact = exact_product(a, b)
    elif exact.a.shape != a.shape or exact.b.shape != b.shape:
        raise ValueError(
            f"exact product of shapes {exact.a.shape}, {exact.b.shape} given for A {a.shape}, "
            f"B {b.shape}"
        )
    err, sq = product_error_from(exact, None, qa.decode(enc_a).T, qb.decode(enc_b).T)
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
