"""Tests of the .mmq file format (mmquant/io.py): round trips, exact size, determinism, bad files."""

import dataclasses
import json
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as st_save

import mmquant as mq
from mmquant import core
from mmquant.core import Encoded
from mmquant.io import FORMAT_VERSION, FormatError, load, load_one, read_info, save


def _default_quantizers():
    out = []
    for cls in mq.registry().values():
        try:
            vs = cls.variants()
            out.append(vs[0] if vs else cls())
        except Exception:  # a family that cannot be built without arguments
            continue
    return out


QUANTIZERS = _default_quantizers()


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return rng.standard_normal((12, 64)).astype(np.float32)


@pytest.fixture
def small_file(tmp_path, x):
    q = mq.get("uniform") if "uniform" in mq.available() else QUANTIZERS[0]
    enc = q.encode(x)
    p = tmp_path / "m.mmq"
    save(p, {"A": enc, "B": q.encode(2 * x)})
    return p, enc


@pytest.mark.parametrize("q", QUANTIZERS, ids=lambda q: q.spec)
def test_round_trip_bit_identical_and_exact_size(tmp_path, x, q):
    enc = q.encode(x)
    p = tmp_path / "a.mmq"
    n = save(p, enc)
    info = read_info(p)
    assert n == p.stat().st_size == info.file_bytes
    # the payload after the header is exactly what bits_per_entry counts (no alignment slack)
    assert info.data_bytes == enc.nbytes
    assert info.matrices["x"].bits_per_entry == enc.bits_per_entry
    back = load_one(p)
    assert back.spec == enc.spec and back.shape == enc.shape and back.seed == enc.seed
    assert back.nbytes == enc.nbytes and back.bits_per_entry == enc.bits_per_entry
    np.testing.assert_array_equal(back.codes, enc.codes)
    for k, v in enc.side.items():
        assert back.side[k].dtype == v.dtype and back.side[k].shape == v.shape
        assert back.side[k].tobytes() == v.tobytes()
    a, b = q.decode(enc), q.decode(back)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_several_matrices_and_names(small_file):
    p, enc = small_file
    d = load(p)
    assert list(d) == ["A", "B"]
    assert mq.load(p, names=["B"]).keys() == {"B"}
    with pytest.raises(ValueError, match="holds 2 matrices"):
        load_one(p)
    assert load_one(p, "A").codes.tobytes() == enc.codes.tobytes()
    with pytest.raises(KeyError, match="no matrix 'C'"):
        load_one(p, "C")
    info = read_info(p)
    assert info.data_bytes == sum(m.nbytes for m in info.matrices.values())


@dataclasses.dataclass(frozen=True)
class _Opaque(mq.Quantizer):
    """Test-only family that declares no layout: its records may hold any side arrays."""

    def _encode(self, x):
        raise NotImplementedError

    def _decode(self, enc):
        return np.zeros(enc.shape)


@pytest.fixture
def opaque_family():
    core.register("testopaque")(_Opaque)
    yield "testopaque"
    del core._REGISTRY["testopaque"]


def test_every_side_dtype_is_stored_at_its_size(tmp_path, opaque_family):
    side = {
        "f16": np.arange(5, dtype=np.float16),
        "u8": np.arange(7, dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float64),
        "bf16": np.ones((2, 3), dtype=ml_dtypes.bfloat16),
        "e4m3": np.full(4, 1.5, dtype=ml_dtypes.float8_e4m3fn),
        "e8m0": np.full(2, 127, dtype=np.uint8),
        "big_endian": np.arange(3, dtype=">f4"),
        "i64": np.arange(3, dtype=np.int64),
        "flag": np.array([True, False]),
        "empty": np.zeros(0, dtype=np.float32),
    }
    enc = Encoded(codes=np.arange(9, dtype=np.uint8), side=side, shape=(3, 6), spec=opaque_family)
    p = tmp_path / "d.mmq"
    save(p, enc)
    assert read_info(p).data_bytes == enc.nbytes
    back = load_one(p, verify=False)
    for k, v in enc.side.items():
        got = back.side[k]
        assert got.dtype == v.dtype.newbyteorder("=") and got.shape == v.shape, k
        np.testing.assert_array_equal(got.astype(np.float64), v.astype(np.float64))


def test_files_are_deterministic(tmp_path, x):
    for q in QUANTIZERS:
        a, b = tmp_path / "a.mmq", tmp_path / "b.mmq"
        save(a, {"A": q.encode(x), "B": q.encode(x[::-1].copy())})
        save(b, {"A": q.encode(x), "B": q.encode(x[::-1].copy())})
        assert a.read_bytes() == b.read_bytes(), q.spec


def test_bad_arguments(tmp_path, x):
    enc = QUANTIZERS[0].encode(x)
    with pytest.raises(TypeError, match="Encoded"):
        save(tmp_path / "a.mmq", x)
    with pytest.raises(ValueError, match="at least one"):
        save(tmp_path / "a.mmq", {})
    with pytest.raises(ValueError, match="without '/'"):
        save(tmp_path / "a.mmq", {"a/b": enc})
    with pytest.raises(TypeError, match="expected an Encoded"):
        save(tmp_path / "a.mmq", {"a": 3})
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.mmq")


# --- damaged files ------------------------------------------------------------------------------
def _rewrite(path, mutate_header=None, mutate_tensors=None, meta=None):
    """Rewrite an .mmq file with a modified header (CRC recomputed) and/or tensors."""
    with safe_open(str(path), framework="np") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        header = json.loads(fh.metadata()["mmquant"])
    header.pop("header_crc32")
    if mutate_header:
        mutate_header(header)
    if mutate_tensors:
        mutate_tensors(tensors)
    canon = json.dumps(header, sort_keys=True, separators=(",", ":"))
    header["header_crc32"] = zlib.crc32(canon.encode())
    if meta is None:
        meta = json.dumps(header, sort_keys=True, separators=(",", ":"))
    path.write_bytes(st_save(tensors, metadata={"mmquant": meta}))


def test_truncated(small_file):
    p, _ = small_file
    data = p.read_bytes()
    for cut in (0, 4, 8, 100, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError, match=r"not an mmquant file|truncated|damaged"):
            load(p)


def test_every_byte_flip_is_detected(small_file):
    p, _ = small_file
    data = p.read_bytes()
    positions = range(len(data))  # each byte, one bit flipped: never a silently wrong matrix
    for i in positions:
        bad = bytearray(data)
        bad[i] ^= 1 << (i % 8)
        p.write_bytes(bytes(bad))
        with pytest.raises(FormatError):
            load(p, verify=False)


def test_data_flip_names_crc(small_file):
    p, _ = small_file
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC32 mismatch in array"):
        load(p)


def test_wrong_magic(small_file):
    p, _ = small_file
    _rewrite(p, lambda h: h.update(magic="gguf"))
    with pytest.raises(FormatError, match="wrong magic 'gguf'"):
        load(p)


def test_not_mmquant_files(tmp_path, x):
    p = tmp_path / "x.npy"
    np.save(p, x)
    with pytest.raises(FormatError, match="not an mmquant file"):
        load(p)
    p = tmp_path / "plain.safetensors"
    p.write_bytes(st_save({"w": x}))
    with pytest.raises(FormatError, match="not an mmquant file"):
        load(p)
    p.write_bytes(b"")
    with pytest.raises(FormatError, match="not an mmquant file"):
        load(p)


def test_unknown_version(small_file):
    p, _ = small_file
    _rewrite(p, lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(FormatError, match=f"unknown format version {FORMAT_VERSION + 1}"):
        load(p)


def test_version_1_files_are_refused_with_the_reason(small_file):
    p, _ = small_file
    _rewrite(p, lambda h: h.update(format_version=1))
    with pytest.raises(FormatError, match=r"format version 1 .*re-encode"):
        load(p)


@pytest.mark.parametrize(
    ("spec", "n"), [("e8", 200), ("timeshare", 200), ("e8", 256), ("int", 200)]
)
def test_version_2_files(tmp_path, spec, n):
    """Version-2 files still load, except rotated codes of a length without a Hadamard matrix,
    whose dense rotation version 3 replaced (they would decode to other numbers)."""
    x = np.random.default_rng(0).standard_normal((4, n))
    enc = mq.get(spec).encode(x)
    p = tmp_path / "v2.mmq"
    save(p, enc)
    _rewrite(p, lambda h: h.update(format_version=2))
    if spec in ("e8", "timeshare") and n == 200:
        with pytest.raises(FormatError, match=r"version 2 with a dense random rotation.*re-encode"):
            load_one(p, verify=False)
    else:
        got = load_one(p)
        assert np.array_equal(mq.get(spec).decode(got), mq.get(spec).decode(enc))


def test_unknown_spec(small_file):
    p, _ = small_file
    _rewrite(p, lambda h: h["matrices"]["A"].update(spec="nosuchquantizer:bits=3"))
    for verify in (True, False):
        with pytest.raises(FormatError, match="unknown spec 'nosuchquantizer"):
            load(p, verify=verify)


def test_missing_array(small_file):
    p, _ = small_file
    _rewrite(p, mutate_tensors=lambda t: t.pop("A/codes"))
    with pytest.raises(FormatError, match="'A/codes' is missing"):
        load(p)


def test_unlisted_array(small_file):
    p, _ = small_file
    _rewrite(p, mutate_tensors=lambda t: t.update({"A/side/extra": np.zeros(3, np.uint8)}))
    with pytest.raises(FormatError, match="not listed in the header"):
        load(p)


def test_header_json_garbage(small_file):
    p, _ = small_file
    _rewrite(p, meta='{"magic": "mmquant", garbage')
    with pytest.raises(FormatError, match="header JSON is damaged"):
        load(p)


def test_header_crc(small_file):
    p, _ = small_file
    with safe_open(str(p), framework="np") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        header = json.loads(fh.metadata()["mmquant"])
    header["matrices"]["A"]["seed"] = 12345  # changed without updating the header CRC
    p.write_bytes(st_save(tensors, metadata={"mmquant": json.dumps(header)}))
    with pytest.raises(FormatError, match="header CRC32 mismatch"):
        load(p)


def test_inconsistent_shape_is_refused_without_decoding(small_file):
    p, enc = small_file
    rows, cols = enc.shape
    _rewrite(p, lambda h: h["matrices"]["A"].update(shape=[4 * rows, cols]))
    for verify in (True, False):  # the layout check needs no decoding
        with pytest.raises(FormatError, match=r"matrix 'A' is malformed: record codes hold"):
            load(p, verify=verify)


def test_files_identical_across_processes(tmp_path, x):
    """Byte-identical files from a fresh interpreter with another hash seed (dict order etc.)."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, mmquant as mq\n"
        "x = np.load(sys.argv[1])\n"
        "for i, s in enumerate(sys.argv[3:]):\n"
        "    mq.save(f'{sys.argv[2]}/{i}.mmq', {'A': mq.get(s).encode(x), 'B': mq.get(s).encode(2 * x)})\n"
    )
    specs = [q.spec for q in QUANTIZERS]
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = str(Path(mq.__file__).parent.parent)
    out = tmp_path / "sub"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.npy"), str(out), *specs],
        check=True,
        cwd=root,
        env=env,
    )
    for i, s in enumerate(specs):
        save(tmp_path / "here.mmq", {"A": mq.get(s).encode(x), "B": mq.get(s).encode(2 * x)})
        assert (out / f"{i}.mmq").read_bytes() == (tmp_path / "here.mmq").read_bytes(), s


DATA = Path(__file__).parent / "data"


def test_version_3_file_loads_with_renamed_side_keys():
    """tests/data/format_v3.mmq was written by the version-3 library (one ``scale`` key for an
    absmax scale, an affine step, an E8M0 exponent and a row RMS); it loads under today's keys and
    decodes to the numbers the old library decoded (format_v3_decoded.npz, same commit)."""
    path = DATA / "format_v3.mmq"
    assert read_info(path).format_version == 3
    recs = load(path)
    want = np.load(DATA / "format_v3_decoded.npz")
    assert set(recs) == set(want.files)
    expected_keys = {
        "int": {"absmax"},
        "int_affine": {"step", "offset"},
        "int_f32": {"absmax"},
        "fp": {"absmax"},
        "fp_e4m3": {"absmax"},
        "nf4": {"absmax"},
        "mxfp4": {"e8m0"},
        "mxfp6": {"e8m0"},
        "mxint8": {"e8m0"},
        "nvfp4": {"block_scale", "tensor_scale"},
        "compander": {"rms"},
        "lloydmax": {"rms"},
        "uniform": {"rms"},
        "datacompander": {"rms", "points"},
    }
    for name, enc in recs.items():
        assert set(enc.side) == expected_keys[name], name
        out = mq.get(enc.spec).decode(enc)
        assert out.dtype == want[name].dtype and out.tobytes() == want[name].tobytes(), name


def test_version_3_file_saved_again_is_version_4(tmp_path):
    recs = load(DATA / "format_v3.mmq")
    p = tmp_path / "again.mmq"
    save(p, recs)
    assert read_info(p).format_version == FORMAT_VERSION == 4
    again = load(p)
    for name, enc in recs.items():
        assert again[name].codes.tobytes() == enc.codes.tobytes()
        assert {k: v.tobytes() for k, v in again[name].side.items()} == {
            k: v.tobytes() for k, v in enc.side.items()
        }


def test_old_side_keys_are_refused_in_version_4(small_file, tmp_path):
    """The renames apply to files of version ≤ 3 only: a version-4 record with ``scale`` is wrong."""
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    enc = mq.get("int").encode(x)
    old = Encoded(enc.codes, {"scale": enc.side["absmax"]}, enc.shape, enc.spec)
    p = tmp_path / "v4_old_key.mmq"
    save(p, old)
    with pytest.raises(FormatError, match="missing 'absmax'"):
        load(p)
    _rewrite(p, lambda h: h.update(format_version=3))
    assert np.array_equal(mq.get("int").decode(load_one(p)), mq.get("int").decode(enc))
