"""Every quantizer on the same matrices, against Γ(R): the computation behind ``mmquant compare``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmquant.core import Encoded, Quantizer, get, registry
from mmquant.data import MatrixPair
from mmquant.experiments.plots import plot_gamma
from mmquant.metrics import exact_product, gap_bits, gap_db, product_error_of
from mmquant.products import has_kernel, times

__all__ = ["CompareRow", "compare", "default_quantizers", "plot_compare", "product_speed"]


@dataclass(frozen=True)
class CompareRow:
    """One quantizer's result on a data source (averaged over its matrix pairs).

    Attributes
    ----------
    spec : str
        Quantizer spec string.
    family : str
        Registry name of the quantizer family.
    bits_per_entry : float
        Mean measured rate of A and B (bits per entry, side information included).
    error : float
        Mean normalised product error ``‖AᵀB − ÂᵀB̂‖²·n/(‖A‖²‖B‖²)`` over the pairs.
    sqnr_db : float
        Mean SQNR of the product in dB.
    gap_db, gap_bits : float
        Distance of ``error`` to Γ(bits_per_entry), in dB and in bits per entry.
    encode_meps : float
        Encode throughput in millions of entries per second (A and B together, this machine),
        after one warm-up encode (JIT compilation and cached designs are not counted).
    pairs : int
        Number of matrix pairs averaged.
    product_speed : float
        Speed of the product from the codes relative to float32: the time of a numpy float32
        GEMV ``Aᵀv`` divided by that of :func:`mmquant.products.times` on the record of ``Aᵀ``
        (first pair; best of a few calls; > 1 is faster than float32). NaN for families without
        a product from the codes.
    """

    spec: str
    family: str
    bits_per_entry: float
    error: float
    sqnr_db: float
    gap_db: float
    gap_bits: float
    encode_meps: float
    pairs: int
    product_speed: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form."""
        return asdict(self)


def default_quantizers(rates: Sequence[float] | None = None) -> list[Quantizer]:
    """The configurations ``mmquant compare`` runs: each family's ``variants`` (per rate if given)."""
    out: list[Quantizer] = []
    seen: set[str] = set()
    for cls in registry().values():
        for rate in rates if rates is not None else [None]:
            for q in cls.variants(rate):
                if q.spec not in seen:
                    seen.add(q.spec)
                    out.append(q)
    return out


def compare(
    pairs: Sequence[MatrixPair],
    quantizers: Sequence[Quantizer | str],
    progress: Callable[[str], None] | None = None,
) -> list[CompareRow]:
    """Quantize every pair with every quantizer and measure the product error.

    Parameters
    ----------
    pairs : sequence of MatrixPair
        Matrices ``A`` (n×a) and ``B`` (n×b); the product is ``AᵀB``.
    quantizers : sequence of Quantizer or str
        The same quantizer is used on both sides.
    progress : callable, optional
        Called with the spec string after each quantizer (the CLI advances its progress bar).

    Returns
    -------
    list of CompareRow
        Sorted by gap to Γ in dB (best first).
    """
    if not pairs:
        raise ValueError("no matrix pairs to compare")
    exacts = [exact_product(p.a, p.b) for p in pairs]  # AᵀB once per pair, not per quantizer
    rows = []
    for q in quantizers:
        q = get(q)
        errs, sqnrs, rates = [], [], []
        t_enc = 0.0
        n_entries = 0
        ea0: Encoded | None = None
        # warm-up outside the timing: JIT compilation and per-process designs (cached β lists,
        # codebooks) are paid once, not per matrix
        q.encode(pairs[0].a.T[:2])
        for p, exact in zip(pairs, exacts):
            at, bt = p.a.T, p.b.T
            t0 = time.perf_counter()
            ea = q.encode(at)
            eb = q.encode(bt)
            t_enc += time.perf_counter() - t0
            if ea0 is None:
                ea0 = ea
            n_entries += at.size + bt.size
            rep = product_error_of(p.a, p.b, ea, eb, exact=exact)
            errs.append(rep.error)
            sqnrs.append(rep.sqnr_db)
            rates.append(rep.rate)
        speed = product_speed(ea0, pairs[0].a.T) if ea0 is not None else float("nan")
        err = float(np.mean(errs))
        rate = float(np.mean(rates))
        rows.append(
            CompareRow(
                spec=q.spec,
                family=q.name,
                bits_per_entry=rate,
                error=err,
                sqnr_db=float(np.mean(sqnrs)),
                gap_db=gap_db(err, rate),
                gap_bits=gap_bits(err, rate),
                encode_meps=n_entries / max(t_enc, 1e-12) / 1e6,
                pairs=len(pairs),
                product_speed=speed,
            )
        )
        if progress is not None:
            progress(q.spec)
    rows.sort(key=lambda r: r.gap_db)
    return rows


def product_speed(enc: Encoded, at: np.ndarray, repeat: int = 10) -> float:
    """float32 GEMV time over the time of the GEMV from the codes of ``enc`` (a record of ``at``).

    One vector; the two products are called in turn ``repeat`` times after a warm-up call of
    each (kernel compilation, the record's check and the layout built once per record are not
    timed), and the ratio is of the best times: both see the same load of the machine, so a busy
    spell slows both instead of one. NaN when the family has no product from the codes.
    """
    if not has_kernel(enc):
        return float("nan")
    a32 = np.ascontiguousarray(at, np.float32)
    v = np.random.default_rng(0).standard_normal(a32.shape[1]).astype(np.float32)

    def codes() -> object:
        return times(enc, v)

    def f32() -> object:
        return a32 @ v

    # the codes first: BLAS threads keep spinning for a while after a call and would take the
    # cores from the kernel's threads (runs 100× slower were seen with the other order)
    codes(), f32()
    t_codes = t_f32 = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        codes()
        t1 = time.perf_counter()
        f32()
        t2 = time.perf_counter()
        t_codes, t_f32 = min(t_codes, t1 - t0), min(t_f32, t2 - t1)
    if repeat == 0:
        return float("nan")
    return max(t_f32, 1e-9) / max(t_codes, 1e-9)


def warm_kernels(specs: Sequence[str], n: int = 4096) -> None:
    """Compile (into numba's disk cache) the kernels :func:`compare` needs for ``specs``.

    The same calls as :func:`compare`'s warm-up (an encode of two float64 rows of ``n`` entries,
    transposed as compare's data are, and a product from that record), so the same kernel
    signatures land in the cache. ``mmquant compare`` runs it for the end of its list in a second
    process when kernels must be compiled, so that both cores compile.
    """
    x = np.random.default_rng(0).standard_normal((n, 2)).T
    for spec in specs:
        q = get(spec)
        enc = q.encode(x)
        product_speed(enc, x, repeat=0)


def start_warming(specs: Sequence[str], n: int = 4096) -> subprocess.Popen | None:
    """Run :func:`warm_kernels` on ``specs`` in reverse order in a background process.

    Only with the numba backend and a writable kernel cache (otherwise nothing is gained);
    returns the process (the caller kills it when done) or ``None``.
    """
    from mmquant.kernels import numba_cache, resolve

    if not specs or resolve() != "numba" or not numba_cache():
        return None
    code = (
        "import sys; from mmquant.experiments.compare import warm_kernels; "
        "warm_kernels(sys.argv[2:], int(sys.argv[1]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(n), *reversed(list(specs))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MMQUANT_KERNELS": "numba"},
    )


def plot_compare(rows: Sequence[CompareRow], path: str | Path, title: str = "") -> None:
    """Product error against measured rate for every row, with the Γ(R) curve, as a PNG."""
    rmax = max([r.bits_per_entry for r in rows] + [4.0]) + 0.5
    points = [r.to_json() for r in rows]
    plot_gamma(path, points, rmax=rmax, title=title or "Product error vs rate", bounds=False)
