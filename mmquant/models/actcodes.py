"""Activation codes with a per-token scale and an online transform (issue 18, second round).

:class:`TokenCode` codes a token ``x`` (a row of ``[tokens, n]``) as

1. ``z = (x − m)·T``: ``m`` a static offset (``W m`` folds into the layer's bias), ``T`` a
   transform applied online — the identity, a randomized Hadamard rotation (``O(n log n)``,
   as QuaRot applies one to the input of the down projection) or the dense balancing transform
   of :func:`~mmquant.models.recipes.balance` for the pair ``(Σ_X, Σ_W)`` (``n²`` multiply-adds
   per token; coordinates uncorrelated, each with its own error weight);
2. ``u = z / s``: ``s`` the token's RMS, stored on an 8-bit logarithmic grid (side information
   ``8/n`` bits per entry, counted in :attr:`TokenCode.bits_per_entry`); this follows the
   token-to-token range of GELU outputs that a static code cannot;
3. ``û`` by a static :class:`~mmquant.models.recipes.ChannelCode` fitted on ``u``: clipping
   ranges per coordinate and bits waterfilled on the error weights ``diag(T⁻¹ Σ_W T⁻ᵀ)`` (what
   each coordinate's error costs at the layer's output);
4. ``x̂ = (û·ŝ)·T⁻¹ + m``.

What is stored per token is ``Σ bits`` of the channel code plus the 8-bit scale, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmquant.models.channelcode import ChannelCode, allocate_bits, balance
from mmquant.validation import check_choice, check_float

__all__ = [
    "TokenCode",
    "SCALE_BITS",
    "SITE_TRANSFORMS",
    "hadamard_rotation",
    "input_site",
    "sensitivity_gains",
    "token_codes",
]

#: Bits of the per-token scale (log2 grid with step 1/8 over ``[−16, 16)``).
SCALE_BITS = 8
_SCALE_STEP = 0.125
_SCALE_LO = -16.0


def _scale_code(s: np.ndarray) -> np.ndarray:
    """Round ``log2 s`` to the 8-bit grid (``2^SCALE_BITS`` levels of step 1/8)."""
    levels = 2**SCALE_BITS
    safe = np.maximum(s, 2.0**_SCALE_LO)
    k = np.clip(np.round((np.log2(safe) - _SCALE_LO) / _SCALE_STEP), 0, levels - 1)
    return np.exp2(_SCALE_LO + k * _SCALE_STEP)


def hadamard_rotation(n: int, seed: int = 0) -> np.ndarray:
    """The matrix ``Uᵀ`` of the seeded rotation of :mod:`mmquant.rotations` (``x Uᵀ = x @ it``).

    Applied online by the fast transform in ``O(n log n)``; here as a dense product (same values
    up to rounding).
    """
    from mmquant.rotations import rotation

    rot = rotation(int(n), seed=seed)
    return np.asarray(rot.apply(np.eye(n)), np.float64)


@dataclass(frozen=True, eq=False)
class TokenCode:
    """``x̂ = (Q(((x − m)T)/ŝ)·ŝ)T⁻¹ + m`` with a per-token scale ``ŝ`` (see module docstring).

    Build it with :meth:`fit`.
    """

    mean: np.ndarray
    t: np.ndarray | None
    t_inv: np.ndarray | None
    inner: ChannelCode
    dynamic: bool = True
    kind: str = "identity"

    @property
    def bits_per_entry(self) -> float:
        """Measured rate: channel-code bits plus the per-token scale, per entry."""
        side = SCALE_BITS / self.mean.size if self.dynamic else 0.0
        return float(self.inner.bits_per_entry + side)

    @property
    def scale_bits(self) -> int:
        """Bits of side information per token (the scale; 0 for a static code)."""
        return SCALE_BITS if self.dynamic else 0

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = x - self.mean
        if self.t is not None:
            z = z @ self.t
        if not self.dynamic:
            return z, np.ones((len(z), 1))
        s = _scale_code(np.sqrt(np.mean(z * z, axis=1, keepdims=True)))
        return z / s, s

    def quantize(self, x: Any) -> np.ndarray:
        """Code and decode ``x`` (``[tokens, channels]``), in its dtype."""
        a = np.asarray(x)
        if a.ndim != 2 or a.shape[1] != self.mean.size:
            raise ValueError(f"expected [tokens, {self.mean.size}], got shape {a.shape}")
        u, s = self._forward(a.astype(np.float64))
        z = np.asarray(self.inner.quantize(u), np.float64) * s
        if self.t_inv is not None:
            z = z @ self.t_inv
        return (z + self.mean).astype(a.dtype, copy=False)

    @classmethod
    def fit(
        cls,
        x: Any,
        sigma_w: Any,
        rate: float,
        *,
        transform: str = "hadamard",
        dynamic: bool = True,
        seed: int = 0,
    ) -> TokenCode:
        """Fit the code on calibration inputs ``x`` for a layer with ``Σ_W = sigma_w``.

        Parameters
        ----------
        x : array_like
            ``[tokens, n]`` calibration inputs of the layer.
        sigma_w : array_like
            ``n×n`` weight covariance ``WᵀW/rows`` of the layer (error weights).
        rate : float
            Bits per entry, side information included (never exceeded).
        transform : {"identity", "hadamard", "balance"}
            The online transform ``T`` (module docstring).
        dynamic : bool
            Per-token scale (False: static code on ``(x − m)T``).
        seed : int
            Seed of the Hadamard signs.
        """
        a = np.asarray(x, np.float64)
        n = a.shape[1] if a.ndim == 2 else 0
        side = SCALE_BITS / n if dynamic and n else 0.0
        r = check_float(rate, "rate", side, lo_open=True) - side
        code, u, wts = cls.prepare(a, sigma_w, transform=transform, dynamic=dynamic, seed=seed)
        return code.with_inner(ChannelCode.fit(u, wts, r))

    def with_inner(self, inner: Any) -> TokenCode:
        """This code with the inner code ``inner`` (fitted on :meth:`prepare`'s ``u``).

        ``inner`` is a :class:`ChannelCode` or an
        :class:`~mmquant.models.ecsqcode.ECSQCode` (anything with ``mean``, ``quantize`` and
        ``bits_per_entry``).
        """
        size = np.asarray(inner.mean).size
        if size != self.mean.size:
            raise ValueError(f"inner code has {size} channels, need {self.mean.size}")
        return TokenCode(self.mean, self.t, self.t_inv, inner, self.dynamic, self.kind)

    @classmethod
    def prepare(
        cls,
        x: Any,
        sigma_w: Any,
        *,
        transform: str = "hadamard",
        dynamic: bool = True,
        seed: int = 0,
    ) -> tuple[TokenCode, np.ndarray, np.ndarray]:
        """Transform and scale of :meth:`fit`, without the channel code.

        Returns ``(code, u, weights)``: the code with a 0-bit channel code (complete it with
        :meth:`with_inner`), the transformed, scaled calibration data ``u`` and the error weight
        of each of its coordinates (for :func:`~mmquant.models.channelcode.allocate_bits`).
        """
        a = np.asarray(x, np.float64)
        sw = np.asarray(sigma_w, np.float64)
        if a.ndim != 2 or sw.shape != (a.shape[1], a.shape[1]):
            raise ValueError(f"need x [tokens, n] and sigma_w n×n, got {a.shape} and {sw.shape}")
        check_choice(transform, "transform", ("identity", "hadamard", "balance"))
        n = a.shape[1]
        mean = a.mean(axis=0)
        xc = a - mean
        if transform == "identity":
            t = t_inv = None
            wts = np.diag(sw).copy()
        elif transform == "hadamard":
            t = hadamard_rotation(n, seed)  # z = x Uᵀ
            t_inv = t.T
            wts = np.einsum("ij,jk,ik->i", t_inv, sw, t_inv)
        else:
            t, t_inv, mu = balance(xc.T @ xc / len(xc), sw)
            wts = np.sqrt(mu)
        zero = ChannelCode(np.zeros(n), np.zeros(n), np.zeros(n, int))
        code = cls(mean, t, t_inv, zero, dynamic, transform)
        u, _ = code._forward(a)
        return code, u, np.clip(wts, 0.0, None)


#: Online transform of each kind of layer input in :func:`token_codes`, chosen on the held-out
#: sentences (``reproduce w4a4``'s notes): the dense balancing transform for the LayerNorm outputs
#: (nothing folds there), a Hadamard rotation for the context (already balanced by folded
#: transforms) and for the GELU outputs (the balancing transform of ``output.dense``'s input
#: would cost as much as the layer: ``Σ_W`` has rank 384 of 1536).
SITE_TRANSFORMS = {"qkv": "balance", "context": "hadamard", "up": "balance", "down": "hadamard"}


def input_site(name: str) -> str:
    """Kind of input of linear layer ``name``: ``qkv``, ``context``, ``up`` or ``down``."""
    if name.endswith(("attention.self.query", "attention.self.key", "attention.self.value")):
        return "qkv"
    if name.endswith("attention.output.dense"):
        return "context"
    if name.endswith("intermediate.dense"):
        return "up"
    if name.endswith("output.dense"):
        return "down"
    raise ValueError(f"not a linear layer of the encoder: {name!r}")


def token_codes(
    model: Any,
    inputs: Any,
    rate: float,
    transforms: dict[str, str] | None = None,
    *,
    allocation: str = "site",
    gains: dict[str, float] | None = None,
    act_code: str = "channel",
    block: int = 1,
) -> dict[str, TokenCode]:
    """A :class:`TokenCode` for the input of every linear layer of ``model`` (a MiniLM).

    Parameters
    ----------
    model : MiniLM
        The model whose weights give ``Σ_W`` (query/key/value: their rows stacked, one code for
        the shared input).
    inputs : mapping
        Layer name → calibration inputs ``[tokens, in]`` (a capture of ``model``).
    rate : float
        Bits per activation entry, side information included.
    transforms : dict, optional
        Site → transform, default :data:`SITE_TRANSFORMS`.
    allocation : {"site", "joint"}
        ``"site"``: every input gets ``rate`` bits per entry; ``"joint"``: one waterfilling over
        the coordinates of all inputs, each coordinate's error weighed by what it adds to the
        *relative* error of its layer's product (``E[s²]·wᵢ / tr(Σ_W Σ_X)``, the query/key/value
        input the sum of its three products), times ``gains[name]`` — the mean rate over all
        entries, scales included, stays ≤ ``rate``.
    gains : dict, optional
        Layer name (the query's for the shared input) → sensitivity factor of ``"joint"``
        (default 1).
    act_code : {"channel", "ecsq", "tcq"}
        Inner code after the transform and the per-token scale: the fixed-rate uniform
        :class:`ChannelCode`; the entropy-coded :class:`~mmquant.models.ecsqcode.ECSQCode`
        (steps ``Δ0/√wᵢ``, measured rates; its target is ``rate`` less the rate inflation that
        a transform and code fitted on the first half of the tokens show on the second half);
        or the trellis-coded rate classes of
        :class:`~mmquant.models.tokentrellis.TrellisChannelCode`. The last two need
        ``allocation="site"``.
    block : int
        Tokens per rANS message of ``"ecsq"`` (1: every token its own message).
    """
    check_choice(allocation, "allocation", ("site", "joint"))
    check_choice(act_code, "act_code", ("channel", "ecsq", "tcq"))
    if act_code != "channel" and allocation != "site":
        raise ValueError(f"act_code={act_code!r} needs allocation='site', got {allocation!r}")
    from mmquant.models.limits import weight_covariance

    tr = dict(SITE_TRANSFORMS if transforms is None else transforms)
    codes: dict[str, TokenCode] = {}
    joint: list[tuple] = []
    curves: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    budget = 0
    for name in model.linear_names:
        site = input_site(name)
        if name.endswith(("attention.self.key", "attention.self.value")):
            if allocation == "site":
                codes[name] = codes[name.rsplit(".", 1)[0] + ".query"]
            continue
        x = np.asarray(inputs[name], np.float64)
        if site == "qkv":
            # the three products count by their relative errors: Σ_W of each projection over
            # its output power tr(Σ_W Σ_X) (stacking the rows instead weighs them by their
            # arbitrary scales after the folded transforms: 1 − cos 9.7e-3 → 8.2e-3, see docs)
            p = name.rsplit(".", 1)[0]
            sx = x.T @ x / len(x)
            sw = np.zeros_like(sx)
            for s in ("query", "key", "value"):
                c = weight_covariance(model.weight(p + "." + s))
                sw += c / max(float(np.sum(c * sx)), 1e-300)
        else:
            sw = weight_covariance(model.weight(name))
        if act_code == "ecsq":
            from mmquant.models.ecsqcode import ECSQCode

            # the transform is fitted on the calibration tokens too: its rate inflation on
            # unseen tokens is measured with transform and code fitted on one half, coded on
            # the other, and taken off the target
            r = check_float(rate, "rate", SCALE_BITS / x.shape[1], lo_open=True)
            r -= SCALE_BITS / x.shape[1]
            half = len(x) // 2
            code_a, u_a, w_a = TokenCode.prepare(x[:half], sw, transform=tr[site])
            probe = ECSQCode.fit(u_a, w_a, r, block=block)
            probe.quantize(code_a._forward(x[half:])[0])
            inflation = max(0.0, probe.meter.bits_per_entry - probe.fit_rate)
            code, u, wts = TokenCode.prepare(x, sw, transform=tr[site])
            inner = ECSQCode.fit(u, wts, r - inflation, block=block)
            codes[name] = code.with_inner(inner)
            continue
        if act_code == "tcq":
            from mmquant.models.tokentrellis import TrellisChannelCode

            r = check_float(rate, "rate", SCALE_BITS / x.shape[1], lo_open=True)
            code, u, wts = TokenCode.prepare(x, sw, transform=tr[site])
            codes[name] = code.with_inner(TrellisChannelCode.fit(u, wts, r - SCALE_BITS / len(wts)))
            continue
        if allocation == "site":
            codes[name] = TokenCode.fit(x, sw, rate, transform=tr[site])
            continue
        code, u, wts = TokenCode.prepare(x, sw, transform=tr[site])
        _, s = code._forward(x)
        power = 1.0 if site == "qkv" else float(np.sum(sw * (x.T @ x))) / len(x)
        g = 1.0 if gains is None else float(gains.get(name, 1.0))
        mu, mse, clip = ChannelCode.curves(u)
        joint.append((name, code, mu, mse, clip))
        curves.append(mse)
        weights.append(wts * (g * float(np.mean(s * s)) / max(power, 1e-300)))
        budget += int(x.shape[1] * check_float(rate, "rate", SCALE_BITS / x.shape[1]) - SCALE_BITS)
    if joint:
        alloc = allocate_bits(curves, weights, budget)
        for (name, code, mu, mse, clip), b in zip(joint, alloc):
            codes[name] = code.with_inner(ChannelCode.from_curves(mu, mse, clip, b))
        for name in model.linear_names:  # key/value share the query's code
            if name.endswith(("attention.self.key", "attention.self.value")):
                codes[name] = codes[name.rsplit(".", 1)[0] + ".query"]
    return codes


def _site_error(model: Any, inputs: Any, name: str, code: Any) -> float:
    """Relative error ``Σ ‖W(x̂ − x)‖² / ‖Wx‖²`` that ``code`` gives the products of ``name``."""
    from mmquant.models.limits import weight_covariance

    x = np.asarray(inputs[name], np.float64)
    e = np.asarray(code.quantize(x), np.float64) - x
    if name.endswith("attention.self.query"):
        p = name.rsplit(".", 1)[0]
        names = [p + "." + s for s in ("query", "key", "value")]
    else:
        names = [name]
    total = 0.0
    for n in names:
        c = weight_covariance(model.weight(n))
        total += float(np.sum((e @ c) * e) / max(float(np.sum((x @ c) * x)), 1e-300))
    return total


def sensitivity_gains(
    model: Any,
    inputs: Any,
    codes: dict[str, Any],
    sentences: Any,
    targets: tuple[float, float] = (8e-3, 1e-2),
) -> dict[str, float]:
    """Measured sensitivity of the model's outputs to each layer input's relative error.

    Each input (the shared query/key/value input counts once) is coded alone with
    ``codes[name]``; on ``sentences`` (calibration sentences, not the evaluation ones) the
    damage ``(1 − cos)/targets[0] + (logit error)/targets[1]`` is divided by the relative
    product error of that code on ``inputs`` (:func:`_site_error`). The result is the ``gains``
    of :func:`token_codes` (``allocation="joint"``): bits go where a unit of relative error
    costs the most output error, in units of the two targets.
    """
    from mmquant.models.capture import capture
    from mmquant.models.quantized import attention_logit_error, embedding_cosine, quantize_model

    t_cos = check_float(targets[0], "targets[0]", 0.0, lo_open=True)
    t_logit = check_float(targets[1], "targets[1]", 0.0, lo_open=True)
    ref = capture(model, sentences)
    gains: dict[str, float] = {}
    for name in model.linear_names:
        if name.endswith(("attention.self.key", "attention.self.value")):
            continue
        group = [name]
        if name.endswith("attention.self.query"):
            p = name.rsplit(".", 1)[0]
            group = [p + "." + s for s in ("query", "key", "value")]
        qm = quantize_model(model, activations={n: codes[name] for n in group})
        got = capture(qm, sentences)
        damage = float(1.0 - embedding_cosine(ref.embeddings, got.embeddings).mean()) / t_cos
        damage += attention_logit_error(ref, got) / t_logit
        gains[name] = damage / max(_site_error(model, inputs, name, codes[name]), 1e-300)
    return gains
