"""The torch and Hugging Face bridge (optional: ``pip install "mmquant[torch]"``).

Calibrate, quantize and evaluate any torch model with every mmquant quantizer::

    from mmquant.torch import capture_covariances, quantize_, compare_lm
    cal = capture_covariances(model, batches, path="calib.safetensors")   # Σ_X per linear layer
    ref = copy.deepcopy(model)
    rep = quantize_(model, "watersic:rate=3", activations="nvfp4", calib=cal)
    print(rep.table())                       # bits/entry, relative error, gap to the limit
    print(compare_lm(ref, model, batches))   # perplexities, next-token KL, top-1 agreement
    quantize_(cpu_model, "nvfp4", codes=True)  # CPU inference straight from the codes

The core package never imports torch; importing this subpackage does.
"""

from mmquant.torch.attention import attention_modules, disable_qk, enable_qk
from mmquant.torch.bundled import bundled_bert, sentence_batches
from mmquant.torch.capture import capture_covariances, linear_modules
from mmquant.torch.codes import CodesLinear, codes_linear
from mmquant.torch.evaluate import (
    LMComparison,
    chunk_ids,
    compare_lm,
    embedding_cosine,
    embeddings,
    kl_divergence,
    perplexity,
)
from mmquant.torch.quantize import LayerReport, QuantReport, quantize_
from mmquant.torch.tensors import real_tokens, to_numpy, to_torch

__all__ = [
    "CodesLinear",
    "codes_linear",
    "LMComparison",
    "LayerReport",
    "QuantReport",
    "attention_modules",
    "bundled_bert",
    "capture_covariances",
    "chunk_ids",
    "compare_lm",
    "disable_qk",
    "embedding_cosine",
    "embeddings",
    "enable_qk",
    "kl_divergence",
    "linear_modules",
    "perplexity",
    "quantize_",
    "real_tokens",
    "sentence_batches",
    "to_numpy",
    "to_torch",
]
