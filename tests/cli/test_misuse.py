"""Every misuse of the ``mmquant`` command line gets one ``error: ...`` line and exit status 2.

The table below goes through the commands (``mmquant --help`` lists compare, reproduce, weights,
quantize, dequantize, inspect and the ``theory`` group) and their options: unknown commands and
options, missing arguments, values of the wrong type or range, missing files, folders where files
are expected, outputs with the wrong suffix or on top of an input, and damaged or malformed input
files. A few end-to-end runs of ``python -m mmquant`` check the same at the process level, and the
last tests check that text from a file (names, specs) reaches the terminal as plain text.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import mmquant as mq
from mmquant.cli import main
from mmquant.io.header import _META_KEY, _canonical

SPEC = "int:bits=4"


def _one_line_error(err: str) -> str:
    """The message of a single ``error: ...`` line (fails on anything else)."""
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith("error: "), repr(err)
    assert "\x1b" not in err, repr(err)
    return err[len("error: ") : -1]


def rewrite_header(path: Path, edit) -> None:
    """Apply ``edit`` to the mmquant header of ``path`` and store it with a fresh header CRC."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    st = json.loads(data[8 : 8 + n])
    header = json.loads(st["__metadata__"][_META_KEY])
    edit(header)
    header.pop("header_crc32", None)
    header["header_crc32"] = zlib.crc32(_canonical(header).encode())
    st["__metadata__"][_META_KEY] = _canonical(header)
    raw = json.dumps(st, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _safetensors(path: Path, header: object, data: bytes = b"") -> None:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """A folder with the files the misuse table refers to."""
    d = tmp_path_factory.mktemp("misuse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.savez(d / "two.npz", A=x, B=x[:2])
    np.savez(d / "empty.npz")
    np.savez(d / "space.npz", **{" A": x})
    (d / "notes.txt").write_text("1 2 3")
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    good = (d / "x.npy").read_bytes()
    (d / "trunc.npy").write_bytes(good[:-10])
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "nan.npy", np.array([[1.0, np.nan]]))
    npz = bytearray((d / "two.npz").read_bytes())
    npz[100] ^= 0xFF  # inside the data of the first member: bad CRC-32
    (d / "badcrc.npz").write_bytes(bytes(npz))
    _safetensors(d / "short.safetensors", b"", b"")
    (d / "tiny.safetensors").write_bytes(b"abc")
    _safetensors(d / "notdict.safetensors", {"w": 5})
    _safetensors(
        d / "offsets.safetensors",
        {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-8, 8]}},
        bytes(16),
    )
    _safetensors(
        d / "overflow.safetensors",
        {"w": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}},
    )
    _safetensors(d / "nested.safetensors", b"[" * 100_000 + b"]" * 100_000)
    # .mmq files: good, with two matrices, damaged in the data, truncated, and not at all
    enc = mq.get(SPEC).encode(x)
    mq.save(d / "a.mmq", enc)
    mq.save(d / "two.mmq", {"A": enc, "B": mq.get(SPEC).encode(x[:2])})
    mmq = bytearray((d / "a.mmq").read_bytes())
    mmq[-3] ^= 0xFF
    (d / "flipped.mmq").write_bytes(bytes(mmq))
    (d / "trunc.mmq").write_bytes(bytes(mmq[: len(mmq) // 2]))
    (d / "empty.mmq").write_bytes(b"")
    # JSON for theory gamma --points
    (d / "bad.json").write_text("{not json")
    (d / "noresults.json").write_text('{"name": "compare"}')
    (d / "badrow.json").write_text('{"results": [{"family": "int", "error": "x"}]}')
    # folders named like files, links onto inputs
    (d / "dir.mmq").mkdir()
    (d / "dir.npy").mkdir()
    (d / "dir.png").mkdir()
    os.symlink(d / "x.npy", d / "link.mmq")
    os.link(d / "x.npy", d / "hard.mmq")
    os.symlink(d / "a.mmq", d / "link.npy")
    os.symlink(d / "badrow.json", d / "points.png")
    return d


def _experiment() -> str:
    from mmquant.experiments.base import experiments

    return next(iter(experiments()))


# (argv, text the message must contain); "{d}" is the folder of the fixture
CASES = [
    # the command line itself
    (["nosuch"], "No such command 'nosuch'"),
    (["--bogus"], "No such option: --bogus"),
    (["theory", "nosuch"], "No such command 'nosuch'"),
    (["inspect", "{d}/a.mmq", "--bogus"], "No such option: --bogus"),
    (["reproduce", "a", "b"], "unexpected extra argument"),
    (["quantize"], "Missing argument 'src'"),
    (["quantize", "{d}/x.npy"], "Missing argument 'dst'"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq"], "Missing option '--spec'"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec"], "requires an argument"),
    (["dequantize"], "Missing argument 'src'"),
    (["inspect"], "Missing argument 'path'"),
    (["compare", "--json"], "requires an argument"),
    # numbers
    (["compare", "--seed", "abc"], "Invalid value for '--seed'"),
    (["compare", "--seed", "-1"], "Invalid value for '--seed'"),
    (["compare", "--rates", "abc"], "--rates must be comma-separated numbers"),
    (["compare", "--rates", "0"], "(0, 16]"),
    (["compare", "--rates", "nan"], "(0, 16]"),
    (["theory", "gamma", "--rates", "inf"], "(0, 16]"),
    (["theory", "gamma", "--rates", "2,,3"], "comma-separated numbers"),
    (["weights", "--rate", "abc"], "Invalid value for '--rate'"),
    (["weights", "--rate", "nan"], "rate must be in"),
    (["weights", "--rate", "-1"], "rate must be in"),
    (["weights", "--sentences", "0"], "n_sentences must be in"),
    (["weights", "--sentences", "1.5"], "Invalid value for '--sentences'"),
    # names and specs
    (["compare", "--data", "nope"], "unknown data source 'nope'"),
    (["compare", "--data", "[/]"], "unknown data source '[/]'"),
    (["compare", "--only", "nosuchfamily"], "no quantizer configuration matches"),
    (["reproduce", "no-such-experiment"], "unknown experiment"),
    (["reproduce", "[/]\x1b[2J"], "unknown experiment '[/]\\x1b[2J'"),
    (["weights", "--method", "bogus"], "method must be one of"),
    (["weights", "--model", "other"], "model must be one of"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec", "nosuch"], "unknown quantizer"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec", "[/]"], "unknown quantizer '[/]'"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec", ""], "empty quantizer name"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec", "int:bits=abc"], "cannot parse bits"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec", "int:bits=99"], "bits must be in"),
    (["quantize", "{d}/x.npy", "{d}/o.mmq", "--spec", SPEC, "--key", "A"], "--key applies"),
    (["quantize", "{d}/two.npz", "{d}/o.mmq", "--spec", SPEC, "--key", "C"], "no array named"),
    (["quantize", "{d}/space.npz", "{d}/o.mmq", "--spec", SPEC], "cannot be stored"),
    (["dequantize", "{d}/two.mmq", "{d}/o.npy"], "write a .npz or pass --name"),
    (["dequantize", "{d}/two.mmq", "{d}/o.npz", "--name", "C"], "has no matrix 'C'"),
    # outputs: suffix, folder, never an input
    (["quantize", "{d}/x.npy", "{d}/x.npy", "--spec", SPEC], "expected a name ending in .mmq"),
    (["quantize", "{d}/x.npy", "{d}/o", "--spec", SPEC], "has no suffix"),
    (["quantize", "{d}/x.npy", "{d}/link.mmq", "--spec", SPEC], "refusing to overwrite"),
    (["quantize", "{d}/x.npy", "{d}/hard.mmq", "--spec", SPEC], "refusing to overwrite"),
    (["quantize", "{d}/x.npy", "{d}/dir.mmq", "--spec", SPEC], "is a folder"),
    (["quantize", "{d}/x.npy", "{d}/nofolder/o.mmq", "--spec", SPEC], "no such folder"),
    (["dequantize", "{d}/a.mmq", "{d}/a.mmq"], "expected a name ending in .npy or .npz"),
    (["dequantize", "{d}/a.mmq", "{d}/o.txt"], "expected a name ending in .npy or .npz"),
    (["dequantize", "{d}/a.mmq", "{d}/link.npy"], "refusing to overwrite"),
    (["dequantize", "{d}/a.mmq", "{d}/dir.npy"], "is a folder"),
    (["compare", "--json", "{d}/out.txt"], "expected a name ending in .json"),
    (["compare", "--plot", "{d}/out.json"], "expected a name ending in .png"),
    (["compare", "--plot", "{d}/dir.png"], "is a folder"),
    (["weights", "--json", "{d}/w.txt"], "expected a name ending in .json"),
    (["theory", "gamma", "--plot", "{d}/g.svg"], "expected a name ending in .png"),
    (["theory", "gamma", "--plot", "{d}/nofolder/g.png"], "no such folder"),
    (["theory", "gamma", "--points", "{d}/badrow.json", "--plot", "{d}/points.png"], "refusing"),
    (["reproduce", "EXPERIMENT", "--out", "{d}/x.npy"], "expected a folder"),
    # inputs: missing, folders, wrong kind
    (["quantize", "{d}/none.npy", "{d}/o.mmq", "--spec", SPEC], "no such file"),
    (["quantize", "{d}", "{d}/o.mmq", "--spec", SPEC], "is a folder"),
    (["quantize", "{d}/notes.txt", "{d}/o.mmq", "--spec", SPEC], "expected .npy, .npz or"),
    (["quantize", "{d}/a.mmq", "{d}/o.mmq", "--spec", SPEC], "expected .npy, .npz or"),
    (["dequantize", "{d}/none.mmq", "{d}/o.npy"], "no such file"),
    (["dequantize", "{d}", "{d}/o.npy"], "is a folder"),
    (["dequantize", "{d}/x.npy", "{d}/o.npy"], "not an mmquant file"),
    (["inspect", "{d}/none.mmq"], "no such file"),
    (["inspect", "{d}"], "is a folder"),
    (["inspect", "{d}/x.npy"], "not an mmquant file"),
    (["theory", "gamma", "--plot", "{d}/g.png", "--points", "{d}/none.json"], "no such file"),
    (["theory", "gamma", "--plot", "{d}/g.png", "--points", "{d}"], "is a folder"),
    # malformed or damaged inputs
    (["quantize", "{d}/trunc.npy", "{d}/o.mmq", "--spec", SPEC], "not a readable .npy file"),
    (["quantize", "{d}/obj.npy", "{d}/o.mmq", "--spec", SPEC], "allow_pickle"),
    (["quantize", "{d}/nan.npy", "{d}/o.mmq", "--spec", SPEC], "non-finite"),
    (["quantize", "{d}/garbage.npz", "{d}/o.mmq", "--spec", SPEC], "not a readable .npz file"),
    (["quantize", "{d}/badcrc.npz", "{d}/o.mmq", "--spec", SPEC], "not a readable .npz file"),
    (["quantize", "{d}/empty.npz", "{d}/o.mmq", "--spec", SPEC], "holds no arrays"),
    (["quantize", "{d}/short.safetensors", "{d}/o.mmq", "--spec", SPEC], "header is not JSON"),
    (["quantize", "{d}/tiny.safetensors", "{d}/o.mmq", "--spec", SPEC], "only 3 bytes"),
    (["quantize", "{d}/notdict.safetensors", "{d}/o.mmq", "--spec", SPEC], "not a JSON object"),
    (["quantize", "{d}/offsets.safetensors", "{d}/o.mmq", "--spec", SPEC], "outside 16 data"),
    (["quantize", "{d}/overflow.safetensors", "{d}/o.mmq", "--spec", SPEC], "needs 73786976"),
    (
        ["quantize", "{d}/nested.safetensors", "{d}/o.mmq", "--spec", SPEC],
        "not a valid safetensors",
    ),
    (["inspect", "{d}/empty.mmq"], "not an mmquant file"),
    (["inspect", "{d}/trunc.mmq"], "not an mmquant file or truncated"),
    (["inspect", "{d}/flipped.mmq", "--verify"], "CRC32 mismatch"),
    (["dequantize", "{d}/flipped.mmq", "{d}/o.npy"], "CRC32 mismatch"),
    (["dequantize", "{d}/trunc.mmq", "{d}/o.npy"], "not an mmquant file or truncated"),
    (["theory", "gamma", "--plot", "{d}/g.png", "--points", "{d}/bad.json"], "not a JSON file"),
    (["theory", "gamma", "--plot", "{d}/g.png", "--points", "{d}/noresults.json"], "no results"),
    (["theory", "gamma", "--plot", "{d}/g.png", "--points", "{d}/badrow.json"], "result 0"),
]


def _ids(case):
    return " ".join(case[0])[:60]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[_ids(c) for c in CASES])
def test_misuse_is_one_line_and_exit_2(d, capsys, argv, expected):
    args = [a.replace("{d}", str(d)).replace("EXPERIMENT", _experiment()) for a in argv]
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(args) == 2, args
    out, err = capsys.readouterr()
    assert out == "", out
    message = _one_line_error(err)
    assert expected in message, (args, message)
    # nothing was written, no input was changed
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    assert after == before, set(after) ^ set(before)


@pytest.mark.parametrize(
    "argv",
    [
        ["nosuch"],
        ["quantize", "{d}/x.npy", "{d}/x.npy", "--spec", SPEC],
        ["inspect", "{d}/flipped.mmq", "--verify"],
        ["inspect", "{d}"],
        ["compare", "--seed", "abc"],
    ],
    ids=["unknown-command", "output-is-input", "damaged-file", "folder", "bad-number"],
)
def test_misuse_end_to_end(d, argv):
    """``python -m mmquant`` in a fresh process: one stderr line, exit 2, nothing on stdout."""
    env = dict(os.environ, PYTHONPATH=str(Path(mq.__file__).parents[1]))
    args = [a.replace("{d}", str(d)) for a in argv]
    res = subprocess.run(
        [sys.executable, "-m", "mmquant", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    _one_line_error(res.stderr)
    assert res.stdout == ""


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("compare", "quantize", "dequantize", "inspect", "theory", "reproduce", "weights"):
        assert cmd in out
    assert main(["theory"]) == 0
    assert "gamma" in capsys.readouterr().out
    assert main(["quantize", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--spec" in out and "--key" in out


def test_quantize_never_overwrites_the_input_through_links(d, tmp_path, capsys):
    src = tmp_path / "w.npy"
    np.save(src, np.ones((2, 8)))
    data = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "sub" / "w.mmq")
    spelled = f"{tmp_path}/sub/../w.mmq"  # resolves beside the input, not onto it: allowed
    assert main(["quantize", str(src), str(tmp_path / "sub" / "w.mmq"), "--spec", SPEC]) == 2
    assert "refusing to overwrite" in _one_line_error(capsys.readouterr().err)
    assert src.read_bytes() == data
    assert main(["quantize", str(src), spelled, "--spec", SPEC]) == 0
    assert src.read_bytes() == data and mq.load_one(tmp_path / "w.mmq").shape == (2, 8)


def test_npz_output_keeps_every_name(tmp_path, capsys):
    """Names numpy.savez would take as its own arguments (file, allow_pickle) are written too."""
    rng = np.random.default_rng(3)
    arrays = {k: rng.standard_normal((2, 16)) for k in ("file", "allow_pickle", "args")}
    q = mq.get(SPEC)
    mq.save(tmp_path / "m.mmq", {k: q.encode(v) for k, v in arrays.items()})
    assert main(["dequantize", str(tmp_path / "m.mmq"), str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as z:
        assert sorted(z.files) == sorted(arrays)
        for k, v in arrays.items():
            assert z[k].tobytes() == q.decode(q.encode(v)).tobytes()


@pytest.fixture
def crafted(tmp_path):
    """A valid .mmq file whose matrix name carries an ANSI escape and rich markup."""
    path = tmp_path / "c.mmq"
    enc = mq.get(SPEC).encode(np.ones((2, 8)))
    mq.save(path, {"\x1b[31mred[bold]\u202e": enc})
    return path


def test_inspect_prints_names_as_plain_text(crafted, capsys):
    assert main(["inspect", str(crafted)]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out and "\u202e" not in out and err == ""
    assert "\\x1b[31mred[bold]\\u202e" in out
    assert main(["inspect", str(crafted), "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert list(json.loads(out)["matrices"]) == ["\x1b[31mred[bold]\u202e"]
    assert main(["dequantize", str(crafted), str(crafted.with_suffix(".npy"))]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred[bold]" in out


@pytest.mark.parametrize("spec", ["[/]", "int:bits=4[/bold]", "int\x1b[2J\x07", "[link=x]y"])
def test_inspect_spec_from_file_is_plain_text(crafted, capsys, spec):
    """A spec edited into the header (CRC recomputed) never reaches rich or the terminal raw."""

    def edit(header):
        for m in header["matrices"].values():
            m["spec"] = spec

    rewrite_header(crafted, edit)
    code = main(["inspect", str(crafted)])
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err
    if code == 0:  # the header is readable: the spec is shown as written, escaped
        assert spec.replace("\x1b", "\\x1b").replace("\x07", "\\x07") in out
    else:  # a loader that checks specs refuses it: one line
        assert code == 2
        _one_line_error(err)
    for argv in (
        ["inspect", str(crafted), "--verify"],
        ["dequantize", str(crafted), str(crafted.with_name("o.npz"))],
    ):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2, argv  # a spec that names no quantizer cannot be decoded
        _one_line_error(err)
