"""Tests of mmquant/checkpoints/reader.py and safetensors_file.py: layouts, laziness, bad input."""

import json
import re
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmquant.checkpoints import open_checkpoint, read_covariance, select_tensors
from mmquant.checkpoints.safetensors_file import read_header, write_safetensors
from mmquant.io import FormatError


def test_sharded_bf16_reads_every_tensor_bit_for_bit(sharded):
    folder, tensors = sharded
    ck = open_checkpoint(folder)
    assert ck.kind == "sharded" and len(ck.files) == 2
    assert list(ck.tensors) == list(tensors)
    for name, ref in tensors.items():
        got = ck.read(name)
        assert isinstance(got, np.memmap) and not got.flags.writeable
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert got.tobytes() == ref.tobytes()
    assert ck.tensors["model.layers.0.mlp.up_proj.weight"].dtype == "BF16"
    assert [f.name for f in ck.extra_files()] == ["config.json", "tokenizer.json"]


def test_selection_by_shape_name_and_globs(sharded):
    ck = open_checkpoint(sharded[0])
    linear = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
    ]
    assert select_tensors(ck) == linear
    assert select_tensors(ck, exclude=["*mlp*"]) == linear[:1]
    got = select_tensors(ck, include=["model.embed_tokens.weight"], exclude=["*down*"])
    assert got == ["model.embed_tokens.weight", *linear[:2]]
    with pytest.raises(ValueError, match="no tensor named 'nope'"):
        select_tensors(ck, include=["nope"])
    with pytest.raises(ValueError, match="cannot be quantized"):
        select_tensors(ck, include=["model.step"])
    with pytest.raises(ValueError, match="no tensor"):
        select_tensors(ck, exclude=["*"])
    with pytest.raises(KeyError, match="no tensor named 'missing'"):
        ck.read("missing")


def test_single_file_npy_npz(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 24)).astype(np.float16)
    save_file({"a.weight": w}, str(tmp_path / "m.safetensors"))
    ck = open_checkpoint(tmp_path / "m.safetensors")
    assert ck.kind == "safetensors" and ck.read("a.weight").tobytes() == w.tobytes()
    assert open_checkpoint(tmp_path).tensors.keys() == {"a.weight"}  # the folder's only file
    np.save(tmp_path / "w.npy", w)
    ck = open_checkpoint(tmp_path / "w.npy")
    assert list(ck.tensors) == ["w"] and np.array_equal(ck.read("w"), w)
    np.savez(tmp_path / "z.npz", x=w, y=w[:2].astype(np.float32))
    ck = open_checkpoint(tmp_path / "z.npz")
    assert ck.tensors["y"].dtype == "F32" and np.array_equal(ck.read("x"), w)


def test_missing_and_corrupt_files(tmp_path, sharded):
    folder, _ = sharded
    with pytest.raises(FileNotFoundError):
        open_checkpoint(tmp_path / "nothing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape("model.safetensors")):
        open_checkpoint(tmp_path / "empty")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00")
    with pytest.raises(FormatError, match="only 2 bytes"):
        open_checkpoint(bad)
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(FormatError, match="header length"):
        open_checkpoint(bad)
    bad.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(FormatError, match="not JSON"):
        open_checkpoint(bad)
    with pytest.raises(FormatError, match="unsupported checkpoint"):
        open_checkpoint(folder / "config.json")
    # truncate a shard: its offsets now lie outside the data
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(FormatError, match="outside"):
        open_checkpoint(folder)


def _header_file(path, header, data=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}, "unsupported dtype"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "outside"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "two integer"),
        ({"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}, "shape"),
    ],
)
def test_hostile_headers(tmp_path, entry, match):
    p = _header_file(tmp_path / "h.safetensors", {"t": entry}, b"\0" * 8)
    with pytest.raises(FormatError, match=match):
        read_header(p)


def test_overlapping_tensors_refused(tmp_path):
    h = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(FormatError, match="share bytes"):
        read_header(_header_file(tmp_path / "o.safetensors", h, b"\0" * 12))


def test_index_problems(sharded):
    folder, _ = sharded
    index = folder / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    wmap = dict(good["weight_map"])
    wmap["model.layers.0.mlp.up_proj.weight"] = "model-00003-of-00003.safetensors"
    index.write_text(json.dumps({"weight_map": wmap}))
    with pytest.raises(FileNotFoundError, match=re.escape("model-00003-of-00003.safetensors")):
        open_checkpoint(folder)
    wmap["model.layers.0.mlp.up_proj.weight"] = "../evil.safetensors"
    index.write_text(json.dumps({"weight_map": wmap}))
    with pytest.raises(FormatError, match="plain file name"):
        open_checkpoint(folder)
    wmap = dict(good["weight_map"]) | {"ghost.weight": "model-00001-of-00002.safetensors"}
    index.write_text(json.dumps({"weight_map": wmap}))
    with pytest.raises(FormatError, match=re.escape("'ghost.weight' is not in its shard")):
        open_checkpoint(folder)
    index.write_text("{not json")
    with pytest.raises(FormatError, match="not a JSON index"):
        open_checkpoint(folder)


def test_streaming_writer_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 7)).astype(ml_dtypes.bfloat16)
    b = np.arange(6, dtype=">i4").reshape(2, 3)  # big-endian in, little-endian stored
    p = tmp_path / "w.safetensors"
    write_safetensors(
        p, [("a", "BF16", a.shape, lambda: a), ("b", "I32", b.shape, lambda: b)], {"k": "v"}
    )
    ck = open_checkpoint(p)
    assert ck.read("a").tobytes() == a.tobytes()
    assert np.array_equal(ck.read("b"), b)
    assert read_header(p).metadata == {"k": "v"}
    with pytest.raises(ValueError, match="got 1 bytes, expected 12"):
        write_safetensors(tmp_path / "x.safetensors", [("c", "F32", (3,), lambda: b"\0")])
    assert not list(tmp_path.glob("x.safetensors*"))  # nothing left behind


def test_read_covariance_checks(tmp_path):
    from mmquant.covariances import save_covariances

    s = np.eye(4) * 2.0
    p = save_covariances(tmp_path / "c.safetensors", {"w": s}, {"w": 10})
    assert np.array_equal(read_covariance(p, "w", 4), s)
    with pytest.raises(ValueError, match="needs 3×3"):
        read_covariance(p, "w", 3)
    with pytest.raises(KeyError, match="no covariance for tensor 'v'"):
        read_covariance(p, "v", 4)
    save_file({"w": s}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an mmquant calibration file"):
        read_covariance(tmp_path / "plain.safetensors", "w", 4)
