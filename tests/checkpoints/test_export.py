"""Tests of mmquant/checkpoints/export.py: the bundled model end to end, a sharded bf16 model."""

import numpy as np
import pytest

import mmquant as mq
from mmquant.checkpoints import (
    dequantize_folder,
    open_checkpoint,
    quantize_checkpoint,
    read_manifest,
    select_tensors,
)
from mmquant.checkpoints.safetensors_file import dtype_of
from mmquant.io import FormatError

SENTENCES = ["A man is eating food.", "The weather is lovely today.", "Quantize the weights."]


def test_dequantized_minilm_gives_the_embeddings_of_quantize_model(tmp_path):
    models = pytest.importorskip("mmquant.models")
    try:
        src = models.find_model_dir()
    except FileNotFoundError:
        pytest.skip("bundled model not installed")
    spec = "int:bits=4"
    names = select_tensors(open_checkpoint(src), exclude=["pooler.*"])
    out = tmp_path / "out"
    res = quantize_checkpoint(src, out, dict.fromkeys(names, spec), dequantized=True)
    assert len(res.quantized) == 36 and (out / "model.mmq").is_file()
    assert {"config.json", "tokenizer.json", "vocab.txt"} <= set(res.files)
    ref = models.quantize_model(models.MiniLM.load(), spec).encode(SENTENCES)
    got = models.MiniLM.load(path=out).encode(SENTENCES)
    assert np.array_equal(got, ref)
    # the tensors that were not quantized are the source's bytes
    a, b = open_checkpoint(src), open_checkpoint(out)
    for n in (
        "embeddings.word_embeddings.weight",
        "pooler.dense.weight",
        "embeddings.position_ids",
    ):
        assert b.read(n).tobytes() == a.read(n).tobytes() and b.tensors[n] == a.tensors[n]


def test_sharded_bf16_export(sharded, tmp_path):
    folder, tensors = sharded
    ck = open_checkpoint(folder)
    names = select_tensors(ck)
    out = tmp_path / "out"
    quantize_checkpoint(folder, out, dict.fromkeys(names, "nvfp4"), dequantized=True)
    for stem in ("model-00001-of-00002", "model-00002-of-00002"):
        assert (out / f"{stem}.mmq").is_file()
        assert (out / f"{stem}.passthrough.safetensors").is_file()
    assert (out / "config.json").read_text() == (folder / "config.json").read_text()
    back = open_checkpoint(out)
    assert back.kind == "sharded" and back.files == ck.files
    q = mq.get("nvfp4")
    for n, ref in tensors.items():
        got = back.read(n)
        assert (
            got.dtype == ref.dtype and got.shape == ref.shape and back.tensors[n] == ck.tensors[n]
        )
        if n in names:
            want = q.decode(q.encode(ref.astype(np.float32))).astype(dtype_of("BF16"))
            assert got.tobytes() == want.tobytes()
        else:
            assert got.tobytes() == ref.tobytes()  # passed through bit for bit
    manifest = read_manifest(out)
    assert manifest["tensors"]["model.step"]["kind"] == "passthrough"
    # decoding the folder again gives the same files
    again = tmp_path / "again"
    dequantize_folder(out, again)
    for f in (*ck.files, "model.safetensors.index.json"):
        assert (again / f).read_bytes() == (out / f).read_bytes()


def test_bad_exports(sharded, tmp_path):
    folder, _ = sharded
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    specs = {"model.layers.0.self_attn.q_proj.weight": "int:bits=4"}
    with pytest.raises(ValueError, match="not empty"):
        quantize_checkpoint(folder, out, specs)
    with pytest.raises(KeyError, match="no tensor named 'ghost'"):
        quantize_checkpoint(folder, tmp_path / "o2", {"ghost": "int:bits=4"})
    with pytest.raises(ValueError, match="not a non-empty float tensor"):
        quantize_checkpoint(folder, tmp_path / "o3", {"model.step": "int:bits=4"})
    with pytest.raises(ValueError, match="is the input"):
        quantize_checkpoint(folder / "model-00001-of-00002.safetensors", folder, specs)
    with pytest.raises(FileNotFoundError, match="not an exported model folder"):
        read_manifest(folder)
    good = tmp_path / "good"
    quantize_checkpoint(folder, good, specs)
    (good / "mmquant-model.json").write_text('{"format": "mmquant-model", "version": 99}')
    with pytest.raises(FormatError, match="version"):
        read_manifest(good)
