"""Fixtures of the checkpoint tests: a synthetic Hugging Face sharded bfloat16 checkpoint."""

import json

import ml_dtypes
import numpy as np
import pytest


def write_sharded(folder, seed=0):
    """Two bf16 shards + index, with linear weights, a norm, an embedding, a bias and an int."""
    rng = np.random.default_rng(seed)
    bf = ml_dtypes.bfloat16

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float32).astype(bf)

    shard1 = {
        "model.embed_tokens.weight": t(50, 32),
        "model.layers.0.self_attn.q_proj.weight": t(32, 32),
        "model.layers.0.self_attn.q_proj.bias": t(32),
        "model.layers.0.input_layernorm.weight": t(32),
    }
    shard2 = {
        "model.layers.0.mlp.up_proj.weight": t(64, 32),
        "model.layers.0.mlp.down_proj.weight": t(32, 64),
        "model.step": np.array([7], dtype=np.int64),
    }
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    # safetensors.numpy cannot write bf16: the files are written here by hand, byte by byte
    for name, tensors in zip(names, (shard1, shard2)):
        header, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
        for k, v in tensors.items():
            tag = "BF16" if v.dtype == bf else "I64"
            header[k] = {
                "dtype": tag,
                "shape": list(v.shape),
                "data_offsets": [off, off + v.nbytes],
            }
            chunks.append(v.tobytes())
            off += v.nbytes
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        (folder / name).write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))
    wmap = {k: names[0] for k in shard1} | {k: names[1] for k in shard2}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": wmap})
    )
    (folder / "config.json").write_text('{"model_type": "toy"}')
    (folder / "tokenizer.json").write_text('{"toy": true}')
    return {**shard1, **shard2}


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    return folder, write_sharded(folder)
