"""Empirical entropy of integer codes and real entropy-coded bitstreams (``constriction``, rANS).

Two probability models are available; both are fitted on the data, and their parameters travel as
side information (counted in the rate by the caller, since they are returned as named arrays):

``"histogram"``
    One categorical model per group: the symbol range ``[offset, offset + len(freq))`` and the
    symbol counts rescaled to ``uint16`` (``freq = max(1, round(65535·count/max count))`` for the
    symbols that occur, 0 for the others). Costs ``4 + 4 + 2·range`` bytes per group: the choice for
    one pooled model or a few groups with narrow ranges.
``"gaussian"``
    One discretised Gaussian per group (``constriction``'s ``QuantizedGaussian`` on the integers of
    ``[lo, hi]``), its mean and standard deviation stored as float32: 8 bytes per group plus the
    pooled range. The choice for many groups (one model per weight column), where histograms would
    cost too much side information.

The bitstream is the rANS coder's output (32-bit words, stored little-endian as bytes). Groups are
encoded last to first so that decoding runs first to last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CodedStream",
    "check_histograms",
    "decode_integers",
    "empirical_entropy",
    "encode_integers",
]

_MODELS = ("histogram", "gaussian")
_FREQ_MAX = 65535


def empirical_entropy(symbols: np.ndarray, axis: int | None = None) -> float:
    """Empirical (plug-in) entropy of integer symbols in bits per symbol.

    Parameters
    ----------
    symbols : numpy.ndarray
        Integer array.
    axis : int, optional
        ``None`` pools all symbols into one histogram; otherwise one histogram per index along
        ``axis`` (e.g. ``axis=-1`` for one per column of a matrix) and the result is the average
        over symbols of the per-group entropies.

    Returns
    -------
    float
        Entropy in bits per symbol.

    Examples
    --------
    >>> empirical_entropy(np.array([0, 1, 0, 1]))
    1.0
    """
    s = np.asarray(symbols)
    if s.dtype.kind not in "iu":
        raise TypeError(f"symbols must be integers, got dtype {s.dtype}")
    if s.size == 0:
        raise ValueError("symbols is empty")
    if axis is None:
        _, counts = np.unique(s.reshape(-1), return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log2(p)).sum())
    moved = np.moveaxis(s, axis, -1).reshape(-1, s.shape[axis])
    total = 0.0
    for j in range(moved.shape[1]):
        total += empirical_entropy(moved[:, j]) * moved.shape[0]
    return total / moved.size


@dataclass(frozen=True)
class CodedStream:
    """An entropy-coded array of integers.

    Attributes
    ----------
    stream : numpy.ndarray
        The bitstream as ``uint8`` (its ``nbytes`` is the coded length).
    side : dict of str to numpy.ndarray
        Model parameters needed to decode, in their stored dtypes (count them in the rate).
    shape : tuple of int
        Shape of the coded integer array.
    """

    stream: np.ndarray
    side: dict[str, np.ndarray]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bitstream bytes plus side-information bytes."""
        return int(self.stream.nbytes + sum(a.nbytes for a in self.side.values()))


def _constriction():
    try:
        import constriction
    except ImportError as exc:  # pragma: no cover - constriction is a core dependency
        raise ImportError(
            "entropy coding needs the 'constriction' package: pip install constriction"
        ) from exc
    return constriction


def _groups_view(s: np.ndarray, group_axis: int | None) -> np.ndarray:
    """2-D view (symbols per group along axis 0, groups along axis 1)."""
    if group_axis is None:
        return s.reshape(-1, 1)
    return np.moveaxis(s, group_axis, -1).reshape(-1, s.shape[group_axis])


def _hist_probs(freq: np.ndarray) -> np.ndarray:
    f = freq.astype(np.float64)
    return f / f.sum()


def encode_integers(
    symbols: np.ndarray, *, group_axis: int | None = None, model: str = "histogram"
) -> CodedStream:
    """Entropy-code an integer array into a real rANS bitstream.

    Parameters
    ----------
    symbols : numpy.ndarray
        Integer array (any shape), values within int32.
    group_axis : int, optional
        ``None``: one model for all symbols. Otherwise one model per index along this axis (for a
        weight matrix of integer codes, ``group_axis=-1`` gives one model per column).
    model : {"histogram", "gaussian"}
        Probability model per group (see the module docstring for their side-information cost).

    Returns
    -------
    CodedStream
        Bitstream, side information and shape; :func:`decode_integers` inverts it exactly.
    """
    if model not in _MODELS:
        raise ValueError(f"model must be one of {', '.join(_MODELS)}; got {model!r}")
    s = np.asarray(symbols)
    if s.dtype.kind not in "iu":
        raise TypeError(f"symbols must be integers, got dtype {s.dtype}")
    if s.size == 0:
        raise ValueError("symbols is empty")
    if int(s.min()) < -(2**30) or int(s.max()) > 2**30:
        raise ValueError("symbols must lie within ±2^30")
    c = _constriction()
    if s.dtype not in (np.int32, np.int64):  # int32 stays (no copy): every step below is exact
        s = s.astype(np.int64)
    g2 = _groups_view(s, group_axis)
    n_groups = g2.shape[1]
    coder = c.stream.stack.AnsCoder()
    side: dict[str, np.ndarray] = {}
    if model == "histogram":
        offsets = g2.min(axis=0).astype(np.int32)
        ranges = (g2.max(axis=0) - offsets + 1).astype(np.int32)
        freqs = []
        for j in range(n_groups):
            counts = np.bincount(g2[:, j] - offsets[j], minlength=int(ranges[j]))
            f = np.where(
                counts > 0, np.maximum(1, np.rint(_FREQ_MAX * counts / counts.max())), 0
            ).astype(np.uint16)
            freqs.append(f)
        for j in range(n_groups - 1, -1, -1):
            if ranges[j] == 1:  # a constant group costs no bits
                continue
            sym = (g2[:, j] - offsets[j]).astype(np.int32)
            coder.encode_reverse(
                sym, c.stream.model.Categorical(_hist_probs(freqs[j]), perfect=False)
            )
        side = {"offset": offsets, "range": ranges, "freq": np.concatenate(freqs)}
    else:
        lo = np.array([g2.min(), g2.max()], np.int32)
        mean = g2.mean(axis=0).astype(np.float32)
        std = np.maximum(g2.std(axis=0), 0.3).astype(np.float32)
        if lo[0] == lo[1]:  # constant array: nothing to code
            return CodedStream(
                stream=np.zeros(0, np.uint8), side={"bounds": lo}, shape=tuple(s.shape)
            )
        fam = c.stream.model.QuantizedGaussian(int(lo[0]), int(lo[1]))
        sym = g2.T.reshape(-1).astype(np.int32)  # group-major order
        m = np.repeat(mean.astype(np.float64), g2.shape[0])
        sd = np.repeat(std.astype(np.float64), g2.shape[0])
        coder.encode_reverse(sym, fam, m, sd)
        side = {"bounds": lo, "mean": mean, "std": std}
    words = np.asarray(coder.get_compressed(), dtype="<u4")
    return CodedStream(stream=words.view(np.uint8).copy(), side=side, shape=tuple(s.shape))


#: Slack of the check "information of the decoded symbols ≤ stream bits" (relative, absolute):
#: the rANS state holds up to 64 bits beyond the stream's words, and constriction quantizes the
#: model probabilities (to 2^-24), which changes a code length by a small relative amount.
_INFO_SLACK_REL = 1.01
_INFO_SLACK_BITS = 128.0


def _information(sym: np.ndarray, probs: np.ndarray) -> float:
    """``Σ −log2 p(s)`` over the decoded symbols (ValueError if one has probability 0)."""
    counts = np.bincount(np.asarray(sym, np.int64), minlength=probs.size)
    if counts.size > probs.size or np.any(counts[probs <= 0] > 0):
        raise ValueError("a decoded symbol has probability 0 under its model")
    used = counts > 0
    return float(np.sum(counts[used] * -np.log2(probs[used])))


def check_histograms(offsets: np.ndarray, ranges: np.ndarray, freq: np.ndarray) -> None:
    """Check stored histogram models (``"histogram"`` side information of :func:`encode_integers`).

    Every symbol range is non-empty and within ±2^30, the concatenated counts ``freq`` have
    ``Σ range`` entries, non-negative, and a range of several symbols has a non-zero count.
    Raises ``ValueError``.
    """
    offsets = np.asarray(offsets).reshape(-1).astype(np.int64)
    ranges = np.asarray(ranges).reshape(-1).astype(np.int64)
    freq = np.asarray(freq).reshape(-1)
    if np.any(ranges < 1) or np.any(offsets < -(2**30)) or np.any(offsets + ranges - 1 > 2**30):
        raise ValueError("histogram symbol ranges must be non-empty and lie within ±2^30")
    if offsets.size != ranges.size or freq.size != int(ranges.sum()):
        raise ValueError(
            f"histogram tables do not match: {offsets.size} offsets, {ranges.size} ranges "
            f"of {int(ranges.sum())} symbols in all, {freq.size} counts"
        )
    if freq.dtype.kind not in "iu" or (freq.size and int(freq.min()) < 0):
        raise ValueError("histogram counts must be non-negative integers")
    ends = np.cumsum(ranges)
    sums = np.add.reduceat(freq.astype(np.int64), ends - ranges) if freq.size else ranges * 0
    if np.any((ranges > 1) & (sums <= 0)):
        raise ValueError("a histogram with several symbols has no non-zero count")


def decode_integers(
    stream: np.ndarray,
    side: dict[str, np.ndarray],
    shape: tuple[int, ...],
    *,
    group_axis: int | None = None,
) -> np.ndarray:
    """Decode a bitstream written by :func:`encode_integers` (same ``group_axis``).

    Returns
    -------
    numpy.ndarray
        ``int64`` array of ``shape``.

    Raises
    ------
    ValueError
        If the stream or side information is malformed.
    """
    c = _constriction()
    data = np.asarray(stream)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size % 4:
        raise ValueError("bitstream must be a 1-D uint8 array whose length is a multiple of 4")
    words = data.view("<u4").astype(np.uint32)
    shape = tuple(int(v) for v in shape)
    total = int(np.prod(shape))
    if group_axis is None:
        n_groups = 1
    else:
        n_groups = shape[group_axis]
    per_group = total // max(n_groups, 1)
    try:
        decoder = c.stream.stack.AnsCoder(words)
        info = 0.0  # information content of the decoded symbols under their models, in bits
        if "freq" in side:
            offsets = np.asarray(side["offset"], np.int64).reshape(-1)
            ranges = np.asarray(side["range"], np.int64).reshape(-1)
            freq = np.asarray(side["freq"]).reshape(-1)
            if offsets.size != n_groups or ranges.size != n_groups or freq.size != ranges.sum():
                raise ValueError("histogram side information does not match the shape")
            check_histograms(offsets, ranges, freq)
            out2 = np.empty((per_group, n_groups), np.int64)
            start = 0
            for j in range(n_groups):
                f = freq[start : start + ranges[j]]
                start += int(ranges[j])
                if ranges[j] == 1:
                    out2[:, j] = offsets[j]
                    continue
                probs = _hist_probs(f)
                model = c.stream.model.Categorical(probs, perfect=False)
                sym = decoder.decode(model, per_group)
                info += _information(sym, probs)
                out2[:, j] = sym + offsets[j]
        else:
            lo = np.asarray(side["bounds"])
            if lo[0] == lo[1]:
                return np.full(shape, int(lo[0]), np.int64)
            mean = np.asarray(side["mean"], np.float64)
            std = np.asarray(side["std"], np.float64)
            if mean.size != n_groups or std.size != n_groups:
                raise ValueError("gaussian side information does not match the shape")
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
                raise ValueError("gaussian side information holds a non-finite mean or std")
            if not -(2**30) <= int(lo[0]) <= int(lo[1]) <= 2**30:
                raise ValueError(f"gaussian bounds {lo.tolist()} are not an interval within ±2^30")
            fam = c.stream.model.QuantizedGaussian(int(lo[0]), int(lo[1]))
            flat = decoder.decode(fam, np.repeat(mean, per_group), np.repeat(std, per_group))
            out2 = flat.astype(np.int64).reshape(n_groups, per_group).T
        if not decoder.is_empty():  # a stream is read exactly to its end
            raise ValueError("the bitstream does not end after the last symbol")
        if info > _INFO_SLACK_REL * 32 * words.size + _INFO_SLACK_BITS:
            # an rANS stream is within a few bits of the information it carries: symbols that
            # carry more were read past its end (a record claiming more symbols than it holds)
            raise ValueError(
                f"the decoded symbols carry {info:.0f} bits of information, the stream holds "
                f"{32 * words.size}: it ends before the last symbol"
            )
    except (KeyError, RuntimeError, AssertionError, ValueError, IndexError) as exc:
        raise ValueError(f"corrupt entropy-coded stream or side information: {exc}") from None
    if group_axis is None:
        return out2.reshape(shape)
    moved_shape = tuple(np.moveaxis(np.empty(shape, np.int8), group_axis, -1).shape)
    return np.moveaxis(out2.reshape(moved_shape), -1, group_axis)
