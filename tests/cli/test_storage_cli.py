"""Tests of ``mmquant quantize / dequantize / inspect`` (mmquant/cli/storage.py)."""

import dataclasses
import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save as st_save

import mmquant as mq
from mmquant.cli import main
from mmquant.io import FORMAT_VERSION


def _err(capsys):
    return " ".join(capsys.readouterr().err.split())  # rich wraps long messages


@pytest.fixture(scope="module")
def spec():
    for s in ("int:bits=4", "uniform"):
        try:
            return mq.get(s).spec
        except ValueError:
            continue
    q = next(iter(mq.registry().values()))
    return (q.variants() or [q()])[0].spec


@pytest.fixture
def arrays():
    rng = np.random.default_rng(1)
    return {
        "A": rng.standard_normal((16, 64)).astype(np.float32),
        "B": rng.standard_normal((8, 32)),
    }


def test_npy_round_trip(tmp_path, capsys, arrays, spec):
    src, mmq, out = tmp_path / "a.npy", tmp_path / "a.mmq", tmp_path / "back.npy"
    np.save(src, arrays["A"])
    assert main(["quantize", str(src), str(mmq), "--spec", spec]) == 0
    text = capsys.readouterr().out
    assert "bits/entry" in text and "wrote" in text
    assert main(["dequantize", str(mmq), str(out)]) == 0
    q = mq.get(spec)
    expected = q.decode(q.encode(arrays["A"]))
    got = np.load(out)
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


def test_npz_keys_and_inspect(tmp_path, capsys, arrays, spec):
    src, mmq = tmp_path / "w.npz", tmp_path / "w.mmq"
    np.savez(src, **arrays)
    assert main(["quantize", str(src), str(mmq), "--spec", spec, "--key", "B"]) == 0
    assert list(mq.load(mmq)) == ["B"]
    assert main(["quantize", str(src), str(mmq), "--spec", spec]) == 0
    capsys.readouterr()
    assert main(["inspect", str(mmq)]) == 0
    text = capsys.readouterr().out
    for word in ("A", "B", spec, "16×64", "8×32", "bits/entry", f"v{FORMAT_VERSION}"):
        assert word in text, word
    assert main(["inspect", str(mmq), "--verify"]) == 0
    assert "data verified" in capsys.readouterr().out
    assert main(["inspect", str(mmq), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    enc = mq.get(spec).encode(arrays["A"])
    assert rec["matrices"]["A"]["bits_per_entry"] == enc.bits_per_entry
    assert rec["matrices"]["B"]["shape"] == [8, 32]
    # several matrices: .npy output needs --name, .npz gets all
    assert main(["dequantize", str(mmq), str(tmp_path / "o.npy")]) == 2
    assert "write a .npz or pass --name" in _err(capsys)
    assert main(["dequantize", str(mmq), str(tmp_path / "o.npy"), "--name", "B"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (8, 32)
    assert main(["dequantize", str(mmq), str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as z:
        assert sorted(z.files) == ["A", "B"]


def test_safetensors_input_with_bf16(tmp_path, arrays, spec):
    src, mmq = tmp_path / "m.safetensors", tmp_path / "m.mmq"
    raw = st_save({"layer.0.weight": arrays["A"], "layer.1.weight": arrays["B"]})
    src.write_bytes(raw)
    assert main(["quantize", str(src), str(mmq), "--spec", spec, "--key", "layer.1.weight"]) == 0
    assert list(mq.load(mmq)) == ["layer.1.weight"]
    # a BF16 tensor (safetensors.numpy cannot read it; our reader uses ml_dtypes)
    bf = arrays["A"].astype(ml_dtypes.bfloat16)
    from mmquant.cli.storage import _read_safetensors

    head = json.dumps(
        {"w": {"dtype": "BF16", "shape": list(bf.shape), "data_offsets": [0, bf.nbytes]}}
    ).encode()
    src.write_bytes(struct.pack("<Q", len(head)) + head + bf.tobytes())
    got = _read_safetensors(src)["w"]
    assert got.dtype == ml_dtypes.bfloat16 and got.tobytes() == bf.tobytes()
    assert main(["quantize", str(src), str(mmq), "--spec", spec]) == 0
    enc = mq.load_one(mmq, "w")
    ref = mq.get(spec).encode(bf.astype(np.float32))
    assert enc.codes.tobytes() == ref.codes.tobytes()


def test_errors_have_exit_code_2(tmp_path, capsys, arrays, spec):
    src = tmp_path / "a.npz"
    np.savez(src, **arrays)
    mmq = tmp_path / "a.mmq"
    cases = [
        (["quantize", str(src), str(mmq), "--spec", "nosuch"], "unknown quantizer"),
        (["quantize", str(src), str(mmq), "--spec", spec, "--key", "C"], "no array named 'C'"),
        (["quantize", str(tmp_path / "none.npy"), str(mmq), "--spec", spec], "no such file"),
        (["quantize", str(tmp_path / "a.txt"), str(mmq), "--spec", spec], "no such file"),
        (["inspect", str(src)], "not an mmquant file"),
        (["dequantize", str(src), str(tmp_path / "o.npy")], "not an mmquant file"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        assert msg in _err(capsys), argv
    (tmp_path / "a.txt").write_text("1 2 3")
    assert main(["quantize", str(tmp_path / "a.txt"), str(mmq), "--spec", spec]) == 2
    assert "expected .npy, .npz or .safetensors" in _err(capsys)
    bad = tmp_path / "nan.npy"
    np.save(bad, np.array([[1.0, np.nan]]))
    assert main(["quantize", str(bad), str(mmq), "--spec", spec]) == 2
    assert "non-finite" in _err(capsys)


def test_damaged_file_is_refused(tmp_path, capsys, arrays, spec):
    src, mmq = tmp_path / "a.npy", tmp_path / "a.mmq"
    np.save(src, arrays["A"])
    assert main(["quantize", str(src), str(mmq), "--spec", spec]) == 0
    data = bytearray(mmq.read_bytes())
    data[-3] ^= 0xFF
    mmq.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["inspect", str(mmq)]) == 0  # the header alone is intact
    capsys.readouterr()
    assert main(["inspect", str(mmq), "--verify"]) == 2
    assert "CRC32 mismatch" in _err(capsys)
    assert main(["dequantize", str(mmq), str(tmp_path / "o.npy")]) == 2
    assert "CRC32 mismatch" in _err(capsys)
    assert not (tmp_path / "o.npy").exists()


def test_inspect_json_is_standard_json_when_stats_are_not_finite(tmp_path, capsys):
    """A header may carry NaN/Inf stats (json accepts them); --json prints them as null."""
    mmq = tmp_path / "nan.mmq"
    enc = mq.get("int:bits=4").encode(np.ones((2, 8)))
    enc = dataclasses.replace(enc, stats={**enc.stats, "bad": float("nan"), "big": float("inf")})
    mq.save(mmq, {"A": enc})
    assert main(["inspect", str(mmq), "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    stats = json.loads(out)["matrices"]["A"]["stats"]
    assert stats["bad"] is None and stats["big"] is None
