"""Static per-channel codes with waterfilled bits, and the balancing transform of a pair.

The building blocks of the covariance-aware activation codes of :mod:`mmquant.models.recipes`
and :mod:`mmquant.models.actcodes`: :class:`ChannelCode` (offset, clipping range and 0–8 bits per
channel, fitted on calibration data), :func:`allocate_bits` (greedy integer reverse waterfilling
on measured error curves) and :func:`balance` (the transform that makes both covariances of a
product diagonal and equal).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmquant.validation import check_float, check_int

__all__ = ["MAX_BITS", "CLIP_FRACTIONS", "ChannelCode", "allocate_bits", "balance"]

#: Most bits a channel may get.
MAX_BITS = 8
#: Clipping ranges tried per channel and bit count, as fractions of the channel's largest
#: deviation from its mean on the calibration data.
CLIP_FRACTIONS = tuple(float(f) for f in np.geomspace(1.0, 0.15, 10))


def _uniform(z: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Midrise uniform code of ``z`` (centred) on ``[−c, c]`` with ``2^b`` levels per column."""
    levels = np.exp2(b).astype(np.float64)
    step = 2.0 * c / levels
    safe = np.where(step > 0, step, 1.0)
    idx = np.clip(np.floor((z + c) / safe), 0.0, levels - 1.0)
    out = -c + (idx + 0.5) * safe
    return np.where(b > 0, out, 0.0)


def _uniform_mse(z: np.ndarray, c: np.ndarray, levels: float, buf: tuple) -> np.ndarray:
    """Per-column MSE of :func:`_uniform` at ``levels ≥ 2`` levels (same arithmetic, in place)."""
    step = 2.0 * c / levels
    safe = np.where(step > 0, step, 1.0)
    t, u = buf
    np.add(z, c, out=t)
    np.divide(t, safe, out=t)
    np.floor(t, out=t)
    np.clip(t, 0.0, levels - 1.0, out=t)
    np.add(t, 0.5, out=t)
    np.multiply(t, safe, out=t)
    np.add(t, -c, out=t)
    np.subtract(z, t, out=u)
    np.multiply(u, u, out=u)
    return u.mean(axis=0)


def _curves(z: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel and bit count, the least MSE over the clipping ranges and its range."""
    n = z.shape[1]
    amax = np.abs(z).max(axis=0)
    mse = np.empty((max_bits + 1, n))
    clip = np.zeros((max_bits + 1, n))
    mse[0] = np.mean(z * z, axis=0)
    buf = (np.empty_like(z), np.empty_like(z))
    for b in range(1, max_bits + 1):
        best = np.full(n, np.inf)
        bc = amax.copy()
        levels = float(2**b)
        for f in CLIP_FRACTIONS:
            c = f * amax
            e = _uniform_mse(z, c, levels, buf)
            better = e < best
            best = np.where(better, e, best)
            bc = np.where(better, c, bc)
        mse[b] = np.minimum(best, mse[b - 1])  # more bits never hurt (keep the smaller range)
        clip[b] = np.where(best <= mse[b - 1], bc, clip[b - 1])
    return mse, clip


def allocate_bits(curves: Sequence[np.ndarray], weights: Sequence[np.ndarray], budget: int) -> list:
    """Greedy integer waterfilling: bits per channel minimising ``Σ wᵢ·mseᵢ(bᵢ)`` for ``Σ bᵢ ≤ budget``.

    Parameters
    ----------
    curves : sequence of numpy.ndarray
        Per code, ``[max_bits + 1, channels]`` error of each channel at 0..max_bits bits
        (non-increasing in the bit count).
    weights : sequence of numpy.ndarray
        Per code, the weight of each channel's error (≥ 0).
    budget : int
        Total bits over all channels of all codes.

    Returns
    -------
    list of numpy.ndarray
        Bits per channel (int64), one array per code.
    """
    budget = check_int(budget, "budget", 0)
    bits = [np.zeros(c.shape[1], dtype=np.int64) for c in curves]
    heap: list[tuple[float, int, int]] = []
    for k, (c, w) in enumerate(zip(curves, weights)):
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (c.shape[1],) or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"weights[{k}] must be {c.shape[1]} finite values ≥ 0")
        gain = w * (c[0] - c[1])
        heap.extend((-float(g), k, i) for i, g in enumerate(gain))
    heapq.heapify(heap)
    left = budget
    while left > 0 and heap:
        g, k, i = heapq.heappop(heap)
        if -g <= 0:
            break
        bits[k][i] += 1
        left -= 1
        b = bits[k][i]
        c = curves[k]
        if b < c.shape[0] - 1:
            w = float(np.asarray(weights[k])[i])
            heapq.heappush(heap, (-w * float(c[b, i] - c[b + 1, i]), k, i))
    return bits


@dataclass(frozen=True, eq=False)
class ChannelCode:
    """Static per-channel uniform code: offset, clipping range and bits of each channel.

    ``quantize(x)`` codes each column ``j`` of ``x`` (``[tokens, channels]``) with ``bits[j]``
    bits on ``[mean[j] − clip[j], mean[j] + clip[j]]`` (midrise levels; 0 bits: the mean). All
    parameters are constants of the layer, fitted once on calibration data, so the stored size
    of a token is exactly ``Σ bits`` bits (no side information per token).

    Build it with :meth:`fit`.
    """

    mean: np.ndarray
    clip: np.ndarray
    bits: np.ndarray
    curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))

    @property
    def bits_per_entry(self) -> float:
        """Measured rate: stored bits per activation entry."""
        return float(np.mean(self.bits))

    @staticmethod
    def curves(x: Any, max_bits: int = MAX_BITS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, mse[b, j], clip[b, j])`` of each column of calibration data ``x``."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 2:
            raise ValueError(f"calibration data must be [tokens ≥ 2, channels], got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("calibration data contain NaN or Inf")
        mu = a.mean(axis=0)
        mse, clip = _curves(a - mu, check_int(max_bits, "max_bits", 1, 16))
        return mu, mse, clip

    @classmethod
    def fit(cls, x: Any, weights: Any, rate: float, *, max_bits: int = MAX_BITS) -> ChannelCode:
        """Fit the code to calibration data ``x`` at ``rate`` bits per entry (waterfilled bits).

        Parameters
        ----------
        x : array_like
            ``[tokens, channels]`` calibration inputs.
        weights : array_like
            ``(channels,)`` weight of each channel's squared error (e.g. ``diag Σ_W``).
        rate : float
            Mean bits per channel (the budget is ``⌊channels·rate⌋`` bits).
        """
        r = check_float(rate, "rate", 0.0, hi=float(max_bits))
        mu, mse, clip = cls.curves(x, max_bits)
        (bits,) = allocate_bits([mse], [np.asarray(weights, np.float64)], int(mse.shape[1] * r))
        return cls.from_curves(mu, mse, clip, bits)

    @classmethod
    def from_curves(
        cls, mu: np.ndarray, mse: np.ndarray, clip: np.ndarray, bits: np.ndarray
    ) -> ChannelCode:
        """The code of the allocation ``bits`` on curves from :meth:`curves`."""
        cols = np.arange(mse.shape[1])
        return cls(mean=mu, clip=clip[bits, cols], bits=bits, curve=mse)

    def quantize(self, x: Any) -> np.ndarray:
        """Code and decode ``x`` (``[tokens, channels]``), in its dtype."""
        a = np.asarray(x)
        if a.ndim != 2 or a.shape[1] != self.bits.size:
            raise ValueError(f"expected [tokens, {self.bits.size}], got shape {a.shape}")
        z = a.astype(np.float64) - self.mean
        return (self.mean + _uniform(z, self.clip, self.bits)).astype(a.dtype, copy=False)


def balance(cov_a: np.ndarray, cov_b: np.ndarray, *, damp: float = 1e-9) -> tuple:
    """``T`` with ``TᵀΣ_A T = T⁻¹Σ_B T⁻ᵀ = diag(√μ)``, ``μ`` = eig(Σ_A Σ_B) (descending).

    ``a' = aT`` and ``b' = bT⁻ᵀ`` (row vectors) keep every product: ``a'b'ᵀ = abᵀ``.

    Parameters
    ----------
    cov_a, cov_b : numpy.ndarray
        ``n×n`` covariances (damped by ``damp·mean diag`` so that both are invertible).

    Returns
    -------
    (T, T_inv, mu) : tuple of numpy.ndarray
    """
    a = np.asarray(cov_a, np.float64)
    b = np.asarray(cov_b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] != a.shape[1]:
        raise ValueError(f"need two n×n covariances, got {a.shape} and {b.shape}")
    n = a.shape[0]
    a = 0.5 * (a + a.T) + damp * max(np.trace(a) / n, 1e-300) * np.eye(n)
    b = 0.5 * (b + b.T) + damp * max(np.trace(b) / n, 1e-300) * np.eye(n)
    la, ua = np.linalg.eigh(a)
    s = (ua * np.sqrt(la)) @ ua.T
    s_inv = (ua / np.sqrt(la)) @ ua.T
    mu, u = np.linalg.eigh(s @ b @ s)
    order = np.argsort(mu)[::-1]
    mu, u = np.clip(mu[order], 1e-300, None), u[:, order]
    t = s_inv @ u * mu**0.25
    t_inv = (u.T * mu[:, None] ** -0.25) @ s
    return t, t_inv, mu
