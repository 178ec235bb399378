"""mmquant.torch on small seeded models: Σ_X capture, quantize_, perplexity and KL plumbing."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install '.[torch]'")
transformers = pytest.importorskip(
    "transformers", reason="transformers not installed: pip install '.[torch]'"
)


import mmquant as mq  # noqa: E402
from mmquant.covariances import Plan, load_covariances, save_plan  # noqa: E402
from mmquant.torch import (  # noqa: E402
    attention_modules,
    capture_covariances,
    chunk_ids,
    compare_lm,
    perplexity,
    quantize_,
    real_tokens,
)


class TwoLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x, attention_mask=None):
        return self.down(torch.relu(self.up(x)))


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for lens in ([5, 3], [4, 4, 1]):
        t = max(lens)
        x = torch.randn(len(lens), t, 16, generator=g)
        mask = torch.zeros(len(lens), t, dtype=torch.long)
        for r, n in enumerate(lens):
            mask[r, :n] = 1
            x[r, n:] = 1e3  # padding garbage that must not count
        out.append({"x": x, "attention_mask": mask})
    return out


def test_capture_covariances_real_tokens_only(tmp_path):
    model, batches = TwoLayer(), _batches()
    cal = capture_covariances(model, batches, path=tmp_path / "c.safetensors")
    xs = torch.cat([b["x"][b["attention_mask"].bool()] for b in batches]).double()
    np.testing.assert_allclose(cal["up.weight"], (xs.T @ xs / len(xs)).numpy(), rtol=1e-12)
    assert cal.tokens == {"up.weight": 17, "down.weight": 17}
    with torch.no_grad():
        h = torch.relu(model.up(xs.float())).double()
    np.testing.assert_allclose(cal["down.weight"], (h.T @ h / len(h)).numpy(), rtol=1e-5)
    back = load_covariances(tmp_path / "c.safetensors")
    assert back.tokens == cal.tokens
    np.testing.assert_array_equal(back["up.weight"], cal["up.weight"])
    assert not model.up._forward_pre_hooks  # hooks removed


def test_capture_errors():
    with pytest.raises(ValueError, match="no calibration batch"):
        capture_covariances(TwoLayer(), [])
    with pytest.raises(ValueError, match="not a linear layer"):
        capture_covariances(TwoLayer(), _batches(), modules=["nope"])
    with pytest.raises(TypeError, match="batch"):
        capture_covariances(TwoLayer(), [3])


def test_quantize_weights_spec_and_report():
    model = TwoLayer()
    w = model.up.weight.detach().numpy().copy()
    q = mq.get("int:bits=4,group=16")
    rep = quantize_(model, q)
    enc = q.encode(w)
    np.testing.assert_array_equal(model.up.weight.detach().numpy(), q.decode(enc))
    r = rep.layers["up.weight"]
    assert r.bits == enc.bits_per_entry and not r.weighted
    d = q.decode(enc).astype(np.float64) - w
    assert math.isclose(
        r.error, float((d**2).sum() / (w.astype(np.float64) ** 2).sum()), rel_tol=1e-9
    )
    assert 0 < r.gap_bits < 4
    assert set(rep.layers) == {"up.weight", "down.weight"}
    assert "up.weight" in rep.table()


def test_quantize_plan_and_weight_only_methods(tmp_path):
    model, batches = TwoLayer(), _batches()
    cal = capture_covariances(model, batches)
    w = model.down.weight.detach().numpy().copy()
    path = save_plan(tmp_path / "p.json", Plan({"down.weight": "watersic:rate=6"}))
    rep = quantize_(model, path, calib=cal)
    assert list(rep.layers) == ["down.weight"] and rep.layers["down.weight"].weighted
    q = mq.get("watersic:rate=6")
    expect = q.decode(q.encode(w, sigma=cal["down.weight"]))
    np.testing.assert_array_equal(model.down.weight.detach().numpy(), expect.astype(np.float32))
    with pytest.raises(ValueError, match="needs the input covariance"):
        quantize_(TwoLayer(), "gptq:rate=3")
    with pytest.raises(ValueError, match="not a linear layer"):
        quantize_(TwoLayer(), {"nope.weight": "nvfp4"})
    with pytest.raises(TypeError, match="weights must be"):
        quantize_(TwoLayer(), 3.0)


def test_activation_hooks_leave_padding_alone_and_come_off():
    model = TwoLayer()
    seen = []
    rep = quantize_(model, activations="int:bits=4,group=16", modules=["up"])
    model.up.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))  # runs after
    b = _batches()[0]
    with real_tokens(b["attention_mask"]), torch.no_grad():
        model(b["x"])
    x, got = b["x"], seen[-1]
    m = b["attention_mask"].bool()
    assert torch.equal(got[~m], x[~m])  # padded rows untouched
    expect = mq.get("int:bits=4,group=16").quantize(x[m].numpy())
    np.testing.assert_array_equal(got[m].numpy(), expect)
    rep.remove()
    with torch.no_grad():
        model(b["x"])
    assert torch.equal(seen[-1], x)


def _lm(attn="sdpa"):
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _ids():
    return chunk_ids(
        torch.randint(0, 64, (4 * 24,), generator=torch.Generator().manual_seed(2)), 24, 2
    )


def test_perplexity_and_kl_plumbing():
    ref, batches = _lm(), _ids()
    ppl = perplexity(ref, batches)
    assert math.isfinite(ppl) and ppl > 1
    same = compare_lm(ref, copy.deepcopy(ref), batches)
    assert same.kl == 0.0 and same.top1 == 1.0 and same.perplexity == same.perplexity_ref
    assert same.tokens == 4 * 23
    kls = []
    for bits in (2, 3, 4, 6, 8):
        m = copy.deepcopy(ref)
        quantize_(m, f"int:bits={bits},group=32")
        kls.append(compare_lm(ref, m, batches).kl)
    assert all(math.isfinite(k) and k > 0 for k in kls)
    assert all(a > b for a, b in itertools.pairwise(kls)), kls


def test_padding_does_not_count_in_perplexity():
    ref = _lm()
    ids = _ids()[0]
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    full = perplexity(ref, [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :12]}])
    padded = perplexity(ref, [{"input_ids": ids, "attention_mask": mask}])
    assert math.isclose(full, padded, rel_tol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_qk_quantization_llama(attn):
    ref, batches = _lm(attn), _ids()
    m = copy.deepcopy(ref)
    assert list(attention_modules(m)) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    rep = quantize_(m, qk="int:bits=3,group=8")
    assert rep.qk_modules == list(attention_modules(m))
    assert m.config._attn_implementation != attn
    kl = compare_lm(ref, m, batches).kl
    assert kl > 0
    rep.remove()
    assert m.config._attn_implementation == attn
    assert compare_lm(ref, m, batches).kl == 0.0
    with pytest.raises(ValueError, match="no attention module"):
        quantize_(TwoLayer(), qk="nvfp4")
