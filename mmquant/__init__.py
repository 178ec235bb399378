"""mmquant: quantization for matrix multiplication, measured against the information-theoretic limit.

Public API::

    import mmquant as mq
    q = mq.get("int:bits=4,group=32")      # any registered quantizer, by spec string
    enc = q.encode(X)                       # Encoded: packed codes + named side information
    X_hat = q.decode(enc)
    enc.bits_per_entry                      # measured from the stored bytes
    rep = mq.product_error(A, B, q)         # error of AᵀB, gap to Γ(R) in dB and bits
    mq.theory.gamma(4.0)                    # Gaussian matmul rate–distortion function
"""

from mmquant import theory
from mmquant.core import VERSION, Encoded, Quantizer, available, get, register, registry
from mmquant.io import FormatError, load, load_one, save
from mmquant.metrics import ProductError, matmul, product_error

__version__ = VERSION

__all__ = [
    "Encoded",
    "FormatError",
    "ProductError",
    "Quantizer",
    "__version__",
    "available",
    "get",
    "load",
    "load_one",
    "matmul",
    "product_error",
    "register",
    "registry",
    "save",
    "theory",
]
