"""The core never imports torch; torch tensors cross the public API and come back as tensors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import mmquant as mq


def test_import_mmquant_does_not_import_torch():
    code = (
        "import sys, numpy as np, mmquant as mq\n"
        "import mmquant.models.quantized, mmquant.covariances, mmquant.cli\n"
        "q = mq.get('int:bits=4,group=32')\n"
        "q.quantize(np.ones((2, 32)))\n"
        "mq.product_error(np.ones((32, 2)), np.ones((32, 2)), q)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_numpy_in_numpy_out():
    x = np.random.default_rng(0).standard_normal((4, 32))
    y = mq.get("int:bits=4,group=32").quantize(x)
    assert isinstance(y, np.ndarray) and y.shape == x.shape


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch not installed: pip install '.[torch]'")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_quantize_returns_a_tensor_of_the_input_dtype(torch, dtype):
    dt = getattr(torch, dtype)
    t = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)).to(dt)
    q = mq.get("nvfp4")
    out = q.quantize(t)
    assert isinstance(out, torch.Tensor) and out.dtype == dt and out.shape == t.shape
    ref = q.quantize(t.float().numpy())
    np.testing.assert_allclose(out.float().numpy(), ref.astype(np.float32), rtol=1e-2, atol=0)
    if dtype == "float32":
        np.testing.assert_array_equal(out.numpy(), ref)


def test_tensors_everywhere_in_the_api(torch):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    rep_t = mq.product_error(a, b, "int:bits=4,group=32")
    rep_n = mq.product_error(a.numpy(), b.numpy(), "int:bits=4,group=32")
    assert rep_t == rep_n
    q = mq.get("int:bits=4,group=32")
    enc = q.encode(a.T.to(torch.bfloat16))
    assert enc.shape == (8, 64)
    w = torch.randn(16, 32, generator=g, dtype=torch.float64)
    sigma = torch.eye(32, dtype=torch.float64) * 2.0
    e1 = mq.get("rtn:rate=4").encode(w, sigma=sigma)
    e2 = mq.get("rtn:rate=4").encode(w.numpy(), sigma=sigma.numpy())
    assert e1.codes.tobytes() == e2.codes.tobytes()


def test_nan_tensor_is_refused(torch):
    t = torch.zeros(2, 32)
    t[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mq.get("nvfp4").quantize(t)
