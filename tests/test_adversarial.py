"""Crafted records and files for every quantizer family, on both kernel backends (issue 12).

A record or file that somebody *made* must never crash the process, make a decoder read outside
its buffers, or decode silently as other numbers. For every configuration ``mmquant compare`` runs
by default (``mmquant.experiments.compare.default_quantizers``) plus the options that change a
record's layout (:data:`EXTRA_SPECS`), a valid record of a 5×40 matrix is mutated:

* sizes: codes truncated or extended, shapes grown, shrunk, empty, negative or absurd;
* side arrays missing, extra, of the wrong dtype or shape;
* the spec relabelled as every other configuration, the seed changed;
* stored values out of range (scale codes that are NaN, negative scales, corrupt models ...).

Each mutation is tried as a record (``Quantizer.decode`` raises ``ValueError``) and as a file
written with valid CRCs (``mmquant.load_one`` raises ``FormatError``, with and without
``verify``; only an entropy-coded bitstream that does not fit the shape needs ``verify``,
since it is found by decoding the stream), with the numba kernels and with the numpy reference (``MMQUANT_KERNELS=numpy`` and
the kernel modules made unimportable, as in tests/test_fuzz.py). A relabelled spec whose declared
layout is identical to the record's (e.g. ``int`` and ``fp:fmt=e2m1``: 4-bit codes and a float16
scale per 32 entries) makes a well-formed record of the other spec: it decodes, finite, as that
spec's numbers; no check can tell it from a genuine file, and the tests assert that these are the
only relabels that get through. The hypothesis test at the end fuzzes random mutations: every
outcome is an error from mmquant or a finite array of the record's shape, and mutations of sizes,
dtypes, names, specs or seeds are refused unless they produce a record of identical layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save as st_save

import mmquant as mq
from mmquant.core import Encoded
from mmquant.experiments.compare import default_quantizers
from mmquant.io import FormatError, load, load_one, read_info, save

#: Options whose records differ in layout from the compare defaults (scales per tensor/row,
#: float32 scales, offsets, centring and dither, union codes, fewer scales ...). Lattice codes
#: with given scales need no design optimisation, so they cost nothing to build.
EXTRA_SPECS = [
    "int:bits=3,group=0,affine=true",
    "int:group=-1,scale_dtype=float32",
    "fp:fmt=e5m2,group=0",
    "nf4:group=-1,scale_dtype=float32",
    "uniform:bits=2,scale_dtype=float32",
    "e8:q=2,betas=1",
    "d4:q=16,betas=0.3;0.6,center=true,dither=true",
    "e8:q=14;15;13,betas=0.2;0.3;0.4",
    "e8ec:rate=2,center=true,dither=false",
    # weight-only (Σ_X = I; rates that leave room for the per-column side information of 5 rows)
    "rtn",
    "gptq:rate=6.0",
    "gptq:rate=6.0,rotate=true",
    "gptq:rate=None,grid=int,bits=3,group=8",
    "watersic:rate=8.0",
    "watersic:rate=8.0,rescale=both",
    "tcq:bits=2,L=8,V=2,code=3inst,mmse=false",
    "tcq:bits=1,L=10,code=lut",
    "tcqec:rate=2.5,L=5",
    "e8sic:rate=8.0",
    "e8sic:rate=8.0,rotate=true,rescale=both",
    "tcqsic:rate=8.0",
    "tcqsic:rate=8.0,L=4,rotate=true",
]
#: Families whose bitstream length is not fixed by the record's layout: a stream that does not
#: fit the shape is found by decoding it (``load_one(verify=True)``).
STREAM_SPECS = (
    "e8ec",
    "rtn",
    "gptq:rate=6.0",
    "watersic",
    "tcqec",
    "e8sic:rate=8.0",
    "tcqsic:rate=8.0",
)
SPECS = list(dict.fromkeys([q.spec for q in default_quantizers()] + EXTRA_SPECS))
FAMILIES = sorted({mq.get(s).name for s in SPECS})
X = np.random.default_rng(12).standard_normal((5, 40)).astype(np.float32)
BACKENDS = ("numba", "numpy")


def test_every_family_is_covered():
    assert set(FAMILIES) == set(mq.available())


@functools.cache
def record(spec: str) -> Encoded:
    """A valid record of :data:`X` (encoded once per process, on the default backend)."""
    return mq.get(spec).encode(X)


@contextlib.contextmanager
def kernels(name: str) -> Iterator[None]:
    """Run with the numba kernels (``"numba"``) or force the numpy reference (``"numpy"``)."""
    if name == "numba":
        yield
        return
    import mmquant.kernels as pkg

    mods = {m for m in sys.modules if m.startswith("mmquant.kernels.")}
    mods |= {f"mmquant.kernels.{p.stem}" for p in Path(pkg.__file__).parent.glob("*.py")}
    mods.discard("mmquant.kernels.__init__")
    saved = {m: sys.modules.get(m) for m in mods}
    env = os.environ.get("MMQUANT_KERNELS")
    os.environ["MMQUANT_KERNELS"] = "numpy"
    sys.modules.update(dict.fromkeys(mods))  # None: importing them raises ImportError
    try:
        yield
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod
        if env is None:
            os.environ.pop("MMQUANT_KERNELS", None)
        else:
            os.environ["MMQUANT_KERNELS"] = env


def _replace(enc: Encoded, **kw) -> Encoded:
    return dataclasses.replace(enc, **kw)


def _other_dtype(arr: np.ndarray, allowed: tuple[np.dtype, ...]) -> np.dtype:
    for dt in (np.float64, np.int16, np.float32, np.uint8):
        if np.dtype(dt) not in allowed and np.dtype(dt) != arr.dtype:
            return np.dtype(dt)
    raise AssertionError("no other dtype")


def must_refuse(spec: str) -> list[tuple[str, Encoded]]:
    """Mutations of a valid record that change only sizes, dtypes, names or the seed."""
    enc = record(spec)
    q = mq.get(spec)
    lay = q.layout(enc.shape)
    c = enc.codes
    out: list[tuple[str, Encoded]] = []
    if c.size:
        out += [
            ("codes minus 1 byte", _replace(enc, codes=c[:-1])),
            ("codes halved", _replace(enc, codes=c[: c.size // 2])),
            ("no codes", _replace(enc, codes=c[:0])),
        ]
    if c.size >= 4:
        out.append(("codes minus 4 bytes", _replace(enc, codes=c[:-4])))
    extra = np.array([1, 2, 3, 4], np.uint8)
    out += [
        ("codes plus 1 byte", _replace(enc, codes=np.concatenate([c, extra[:1]]))),
        ("codes plus 4 bytes", _replace(enc, codes=np.concatenate([c, extra]))),
        ("codes doubled", _replace(enc, codes=np.concatenate([c, c]))),
    ]
    rows, n = enc.shape
    same = q.layout(enc.shape)
    for shape in [
        (2 * rows, n),
        (rows + 1, n),
        (rows, n + 8),
        (rows, 2 * n),
        (rows - 1, n),
        (40000, 4096),
        (10**12,),
        (0, n),
        (-rows, n),
        (rows, 0),
        (),
        (1,) * 40,
    ]:
        valid = len(shape) > 0 and all(v > 0 for v in shape) and math.prod(shape) < 10**7
        if valid and q.layout(shape) == same and q.name != "e8ec":
            continue  # a well-formed record of that shape too (see test_shape_edits_...)
        out.append((f"shape {shape}", _replace(enc, shape=shape)))
    for key, arr in enc.side.items():
        rest = {k: v for k, v in enc.side.items() if k != key}
        if key not in lay.optional:  # an optional array may be absent (another valid record)
            out.append((f"side {key!r} missing", _replace(enc, side=rest)))
        bad_dt = _other_dtype(arr, lay.side[key].dtypes)
        out.append(
            (f"side {key!r} as {bad_dt}", _replace(enc, side={**rest, key: arr.astype(bad_dt)}))
        )
        longer = np.concatenate([arr.reshape(-1), arr.reshape(-1)[:1]])
        out.append((f"side {key!r} one longer", _replace(enc, side={**rest, key: longer})))
        other = arr.reshape(1, -1) if arr.ndim == 1 else arr.reshape(-1)
        out.append((f"side {key!r} reshaped", _replace(enc, side={**rest, key: other})))
    out.append(("extra side array", _replace(enc, side={**enc.side, "extra": np.zeros(2)})))
    seed = 1 if enc.seed is None else enc.seed + 1
    out.append((f"seed {seed}", _replace(enc, seed=seed)))
    if enc.seed is not None:
        out.append(("seed None", _replace(enc, seed=None)))
    return out


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
def test_size_dtype_name_and_seed_mutations_are_refused(spec, kern):
    q = mq.get(spec)
    with kernels(kern):
        ref = q.decode(record(spec))
        assert ref.shape == X.shape and np.isfinite(ref).all()
        for label, bad in must_refuse(spec):
            with pytest.raises(ValueError):
                q.decode(bad)
                pytest.fail(f"{spec}: {label} decoded")  # pragma: no cover
        assert q.decode(record(spec)).tobytes() == ref.tobytes()  # nothing was corrupted


def _well_formed(spec: str, enc: Encoded) -> bool:
    try:
        mq.get(spec).check(enc)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
def test_crafted_files_are_refused(spec, kern, tmp_path):
    """The same mutations saved as files with valid CRCs: FormatError, with or without verify."""
    p = tmp_path / "crafted.mmq"
    with kernels(kern):
        for label, bad in must_refuse(spec):
            save(p, bad)
            for verify in (False, True):
                if not verify and spec.startswith(STREAM_SPECS) and _well_formed(spec, bad):
                    continue  # a bitstream that does not fit the shape is found by decoding
                with pytest.raises(FormatError):
                    load_one(p, verify=verify)
                    pytest.fail(f"{spec}: {label} loaded (verify={verify})")  # pragma: no cover


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
def test_shape_edits_that_keep_the_layout(spec, kern):
    """Shapes whose layout equals the record's: the packed codes of a few more entries or blocks
    fit in the same bytes (codes are packed in groups of 8). Such a record is well-formed for
    the other shape and decodes finite (grown: the zero padding read as codes) -- or is refused
    when the padding it would need is not zero (shrunk) or its numbers do not fit (e8ec)."""
    enc = record(spec)
    q = mq.get(spec)
    rows, n = enc.shape
    with kernels(kern):
        for shape in [(rows, n + d) for d in range(-7, 8) if d] + [(1, rows, n), (rows * n,)]:
            if q.layout(shape) != q.layout(enc.shape):
                continue
            try:
                out = q.decode(_replace(enc, shape=shape))
            except ValueError:
                continue
            assert out.shape == shape and np.isfinite(out).all()


def _same_layout(src: mq.Quantizer, dst: mq.Quantizer, shape: tuple[int, ...]) -> bool:
    return src.layout(shape) == dst.layout(shape)


def _admits(src: mq.Quantizer, dst: mq.Quantizer, enc: Encoded) -> bool:
    """Identical layouts once the optional side arrays the record leaves out are dropped."""

    def effective(q: mq.Quantizer):
        lay = q.layout(enc.shape)
        keep = {k: v for k, v in lay.side.items() if k in enc.side or k not in lay.optional}
        return dataclasses.replace(lay, side=keep, optional=frozenset())

    return effective(src) == effective(dst)


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
def test_relabelled_specs_are_refused_unless_the_layout_is_identical(spec, kern):
    enc = record(spec)
    src = mq.get(spec)
    with kernels(kern):
        for other in SPECS:
            dst = mq.get(other)
            if dst == src:
                continue
            bad = _replace(enc, spec=other)
            if not _same_layout(src, dst, enc.shape) and not _admits(src, dst, enc):
                with pytest.raises(ValueError):
                    dst.decode(bad)
                    pytest.fail(f"{spec} relabelled {other} decoded")  # pragma: no cover
                continue
            try:  # a well-formed record of the other spec: its numbers, finite, or refused
                out = dst.decode(bad)
            except ValueError:
                continue
            assert out.shape == enc.shape and np.isfinite(out).all()


def test_relabels_that_get_through_are_the_identical_layouts():
    """The pairs of configurations with identical records: the only undetectable relabels."""
    same = {
        frozenset((a, b))
        for a in SPECS
        for b in SPECS
        if a < b and _same_layout(mq.get(a), mq.get(b), X.shape)
    }
    groups = [  # each: codes of the same width and the same scales
        {"int", "fp:fmt=e2m1"},  # 4-bit codes, a float16 scale per 32 entries
        {"int:bits=8", "fp"},  # 8-bit codes, a float16 scale per 32 entries
        {"int:group=-1,scale_dtype=float32", "nf4:group=-1,scale_dtype=float32"},  # 4 bits
        {"mxfp6", "mxfp6:elem=e3m2"},  # 6-bit elements, an E8M0 scale per 32
        {"mxfp8", "mxfp8:elem=e5m2", "mxint8"},  # 8-bit elements, an E8M0 scale per 32
        {"compander", "lloydmax", "uniform"},  # 4-bit codes, a float16 RMS per row
        {"e8", "d4", "zn"},  # q = 14, k = 4: the lattice is not in the record
        {"e8:group=32", "d4:group=32", "zn:group=32"},
        {"rtn", "gptq:rate=6.0"},  # an entropy-coded uniform grid: the same decoder
        {"tcqec", "tcqec:rate=2.5,L=5"},  # a stream, Δ and row scales: L is not in the record
    ]
    expected = {frozenset((a, b)) for g in groups for a in g for b in g if a < b}
    assert same == expected


# ---------------------------------------------------------------------------------------------
# Stored values out of range: the decoders' own checks (before any kernel indexes a table)
# ---------------------------------------------------------------------------------------------
def _set(spec: str, key: str, values) -> Encoded:
    enc = record(spec)
    arr = enc.side[key].copy()
    flat = arr.reshape(-1)
    flat[: len(values)] = values
    return _replace(enc, side={**enc.side, key: arr})


VALUE_CASES = [
    ("int", "absmax", [-1.0], "negative or non-finite"),
    ("int", "absmax", [np.nan], "negative or non-finite"),
    ("int:bits=3,group=0,affine=true", "offset", [np.inf], "non-finite"),
    ("fp", "absmax", [np.inf], "negative or non-finite"),
    ("nf4", "absmax", [-2.0], "negative or non-finite"),
    ("mxfp4", "e8m0", [255], "E8M0"),
    ("mxint8", "e8m0", [255], "E8M0"),
    ("nvfp4", "block_scale", [0x7F], "E4M3"),
    ("nvfp4", "block_scale", [0x80], "E4M3"),
    ("nvfp4", "tensor_scale", [np.nan], "tensor_scale"),
    ("compander", "rms", [-1.0], "negative or non-finite"),
    ("datacompander", "points", [np.nan], "non-finite"),
    ("e8", "betas", [-0.5], "'betas'"),
    ("e8", "norm", [np.inf], "'norm'"),
    ("e8", "alpha", [np.nan], "non-finite"),
    ("e8:group=32", "weights", [9], "weights"),
    ("e8:group=32", "budget", [60000], "budget"),
    ("e8:q=14;15;13,betas=0.2;0.3;0.4", "qs", [3], "'qs'"),
    ("e8ec", "model_range", [0], "corrupt entropy-coded"),
    ("e8ec", "model_offset", [-(2**31)], "corrupt entropy-coded"),
    ("e8ec", "beta", [0.0], "'beta'"),
    ("timeshare", "alpha", [-1.0], "'alpha'"),
    ("rtn", "bounds", [3, -3], "'bounds'"),
    ("rtn", "unit", [np.inf], "non-finite"),
    ("watersic:rate=8.0", "col_scale", [np.nan], "non-finite"),
    ("e8sic:rate=8.0", "col_scale", [np.inf], "non-finite"),
    ("e8sic:rate=8.0", "bounds", [1, 5], "'bounds'"),
    ("gptq:rate=None,grid=int,bits=3,group=8", "row_scale", [np.inf], "non-finite"),
    ("tcq", "norm", [-1.0], "'norm'"),
    ("tcqec", "delta", [0.0], "'delta'"),
    ("tcqec", "model_range", [0], "corrupt entropy-coded"),
]


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize(("spec", "key", "values", "msg"), VALUE_CASES)
def test_stored_values_out_of_range_are_refused(spec, key, values, msg, kern, tmp_path):
    bad = _set(spec, key, values)
    with kernels(kern):
        with pytest.raises(ValueError, match=msg):
            mq.get(spec).decode(bad)
        p = tmp_path / "v.mmq"
        save(p, bad)
        try:  # values that set the code length are checked without decoding
            mq.get(spec).check(bad)
        except ValueError:
            with pytest.raises(FormatError, match="is malformed"):
                load_one(p, verify=False)
        else:
            load_one(p, verify=False)  # well-formed: only decoding sees the values
        with pytest.raises(FormatError, match=msg):
            load_one(p)


def test_e8ec_corrupt_models_and_streams():
    enc = record("e8ec")
    q = mq.get("e8ec")
    freq = enc.side["model_freq"]
    cases = {
        "all counts zero": {**enc.side, "model_freq": np.zeros_like(freq)},
        "freq longer than the ranges": {
            **enc.side,
            "model_freq": np.concatenate([freq, freq[:1]]),
        },
    }
    for label, side in cases.items():
        with pytest.raises(ValueError, match="corrupt entropy-coded"):
            q.decode(_replace(enc, side=side))
            pytest.fail(label)  # pragma: no cover
    words = enc.codes.view("<u4")
    for label, codes in {
        "first word dropped": words[1:],
        "word prepended": np.concatenate([[12345], words]).astype("<u4"),
        "word appended": np.concatenate([words, [7]]).astype("<u4"),
    }.items():
        with pytest.raises(ValueError, match="corrupt entropy-coded"):
            q.decode(_replace(enc, codes=codes.view(np.uint8)))
            pytest.fail(label)  # pragma: no cover


def test_e8ec_and_timeshare_keep_to_the_size_rule():
    """A degenerate input e8ec would store below 1 byte per 1024 entries is refused at encode."""
    with pytest.raises(ValueError, match="fewer than one byte per 1024 entries"):
        mq.get("e8ec").encode(np.zeros((1, 2**20), np.float32))
    with pytest.raises(ValueError, match="rate"):
        mq.get("timeshare:rate=0.001")
    q = mq.get("timeshare:rate=0.0078125")
    enc = q.encode(np.random.default_rng(0).standard_normal((2, 8192)))
    assert enc.entries <= 1024 * enc.nbytes
    q.decode(enc)


# ---------------------------------------------------------------------------------------------
# Crafted headers (CRCs recomputed)
# ---------------------------------------------------------------------------------------------
def rewrite(
    path: Path,
    header: Callable[[dict], None] | None = None,
    tensors: Callable[[dict], None] | None = None,
    restamp: bool = True,
    meta: str | None = None,
) -> None:
    """Rewrite an .mmq file: edit the header and/or tensors, recompute the CRCs.

    ``restamp`` rewrites each listed array's dtype, shape and crc32 from the (edited) tensors
    before ``header`` runs, so that a crafted file is consistent except for what ``header``
    changes; the header CRC is always recomputed.
    """
    with safe_open(str(path), framework="np") as fh:
        t = {k: fh.get_tensor(k) for k in fh.keys()}
        h = json.loads(fh.metadata()["mmquant"])
    h.pop("header_crc32")
    if tensors:
        tensors(t)
    if restamp:
        for m in h["matrices"].values():
            for name, entry in m["arrays"].items():
                if name in t:
                    arr = t[name]
                    entry.update(
                        dtype=arr.dtype.name,
                        shape=list(arr.shape),
                        raw=False,
                        crc32=zlib.crc32(np.ascontiguousarray(arr).tobytes()),
                    )
    if header:
        header(h)
    canon = json.dumps(h, sort_keys=True, separators=(",", ":"))
    h["header_crc32"] = zlib.crc32(canon.encode())
    if meta is None:
        meta = json.dumps(h, sort_keys=True, separators=(",", ":"))
    path.write_bytes(st_save(t, metadata={"mmquant": meta}))


@pytest.fixture
def int_file(tmp_path):
    p = tmp_path / "int.mmq"
    save(p, record("int"))
    return p


def test_truncated_codes_file_is_refused_on_both_backends(int_file):
    """The issue's crash: 3 bytes of codes and a huge shape, CRCs recomputed (segfaulted)."""

    def cut(t):
        t["x/codes"] = t["x/codes"][:3]

    for shape in ([40000, 4096], [5, 40]):
        rewrite(int_file, header=lambda h, s=shape: h["matrices"]["x"].update(shape=s), tensors=cut)
        for kern in BACKENDS:
            with kernels(kern):
                for verify in (False, True):
                    with pytest.raises(FormatError, match="malformed"):
                        load_one(int_file, verify=verify)


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda m: m.update(shape=["5", 40]), "shape must be a list of integers"),
        (lambda m: m.update(shape=[5.0, 40]), "shape must be a list of integers"),
        (lambda m: m.update(shape=[True, 40]), "shape must be a list of integers"),
        (lambda m: m.update(shape=[-5, 40]), "positive integer"),
        (lambda m: m.update(shape=[]), "1 to 32 dimensions"),
        (lambda m: m.update(shape=[1] * 33), "1 to 32 dimensions"),
        (lambda m: m.update(shape=5), "shape must be a list"),
        (lambda m: m.update(spec=5), "spec must be a string"),
        (lambda m: m.update(seed="0"), "seed must be null"),
        (lambda m: m.update(seed=-1), "seed must be null"),
        (lambda m: m.update(seed=3), "seed 3 differs"),
        (lambda m: m.update(stats={"a": {"b": 1}}), "stats must be an object of numbers"),
        (lambda m: m.update(stats=[1]), "stats must be an object of numbers"),
        (lambda m: m.pop("arrays"), "lacks arrays"),
        (lambda m: m["arrays"]["x/codes"].update(dtype="object"), "not a numeric dtype"),
        (lambda m: m["arrays"]["x/codes"].update(dtype="V8"), "not a numeric dtype"),
        (lambda m: m["arrays"]["x/codes"].update(dtype="i4,i4"), "not a numeric dtype"),
        (lambda m: m["arrays"]["x/codes"].update(dtype="nonsense"), "unknown dtype"),
        (lambda m: m["arrays"]["x/codes"].update(crc32="1"), "crc32"),
        (lambda m: m["arrays"]["x/codes"].update(raw="yes"), "'raw' must be"),
        (lambda m: m["arrays"]["x/side/absmax"].update(shape=[5, -2]), "invalid shape"),
        (lambda m: m.update(spec="mxfp4"), "missing 'e8m0'; unexpected 'absmax'"),
        (lambda m: m.update(spec="int:bits=8"), "codes hold 100 bytes"),
        (lambda m: m.update(spec="nf4"), "side array 'absmax'"),
    ],
)
def test_edited_header_fields_are_refused(int_file, edit, msg):
    rewrite(int_file, header=lambda h: edit(h["matrices"]["x"]))
    with pytest.raises(FormatError, match=msg):
        load(int_file, verify=False)


def test_side_dtype_relabelled_in_the_header_is_refused(int_file):
    """float16 scales re-declared as raw bfloat16 (same bytes, CRCs recomputed)."""

    def to_raw(t):
        t["x/side/absmax"] = np.ascontiguousarray(t["x/side/absmax"]).reshape(-1).view(np.uint8)

    def declare(h):
        e = h["matrices"]["x"]["arrays"]["x/side/absmax"]
        e.update(dtype="bfloat16", shape=[5, 2], raw=True)

    rewrite(int_file, header=declare, tensors=to_raw)
    with pytest.raises(FormatError, match="side array 'absmax' is bfloat16"):
        load_one(int_file, verify=False)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_headers_raise_format_error(int_file):
    base = int_file.read_bytes()
    # inside the mmquant JSON header (stats nested 100000 deep), CRC recomputed
    with safe_open(str(int_file), framework="np") as fh:
        t = {k: fh.get_tensor(k) for k in fh.keys()}
        h = json.loads(fh.metadata()["mmquant"])
    h.pop("header_crc32")
    text = json.dumps(h, sort_keys=True, separators=(",", ":"))
    text = text.replace('"stats":{}', '"stats":' + _nested(100000))
    int_file.write_bytes(st_save(t, metadata={"mmquant": text}))
    for fn in (read_info, load):
        with pytest.raises(FormatError, match="nested too deeply"):
            fn(int_file)
    # nested 40 deep: parses, but deeper than the 32 levels a header may have
    int_file.write_bytes(
        st_save(t, metadata={"mmquant": text.replace(_nested(100000), _nested(40))})
    )
    with pytest.raises(FormatError, match="nested too deeply"):
        load(int_file)
    # in the safetensors header itself
    outer = ('{"__metadata__":{"mmquant":"{}"},"x":' + _nested(100000) + "}").encode()
    int_file.write_bytes(struct.pack("<Q", len(outer)) + outer)
    with pytest.raises(FormatError, match="nested too deeply"):
        load(int_file)
    int_file.write_bytes(base)
    load(int_file)


def test_oversized_header_is_refused_without_reading_it(tmp_path):
    p = tmp_path / "big.mmq"
    n = 100_000_001
    with open(p, "wb") as fh:  # a sparse file: the header length fits the file size
        fh.write(struct.pack("<Q", n))
        fh.seek(8 + n)
        fh.write(b"\0")
    with pytest.raises(FormatError, match="exceeds the limit of 100000000 bytes"):
        load(p)


def test_huge_numbers_in_headers(int_file):
    rewrite(int_file, header=lambda h: h["matrices"]["x"].update(shape=[10**40, 40]))
    with pytest.raises(FormatError, match="entries per stored byte"):
        load(int_file, verify=False)
    rewrite(int_file, meta='{"magic": "mmquant", "x": ' + "9" * 5000 + "}")
    with pytest.raises(FormatError, match="damaged"):
        load(int_file)


# ---------------------------------------------------------------------------------------------
# Hypothesis: random mutations of valid records
# ---------------------------------------------------------------------------------------------
MUTATIONS = (
    "codes_bytes",
    "side_values",
    "codes_size",
    "shape",
    "dtype",
    "spec",
    "seed",
    "side_names",
)
NUMERIC_DTYPES = ("float16", "float32", "float64", "uint8", "int8", "uint16", "int32", "int64")


def _mutate(data, spec: str) -> tuple[str, Encoded, bool, mq.Quantizer]:
    """(kind, mutated record, whether it must be refused, the quantizer that decodes it)."""
    enc = record(spec)
    q = mq.get(spec)
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    c = enc.codes
    keys = sorted(enc.side)
    if kind == "codes_bytes":  # same length, some bytes replaced: decodes or is refused
        codes = c.copy()
        if c.size:
            for _ in range(data.draw(st.integers(1, 8))):
                codes[data.draw(st.integers(0, c.size - 1))] = data.draw(st.integers(0, 255))
        return kind, _replace(enc, codes=codes), False, q
    if kind == "side_values":  # random bytes in a side array: decodes or is refused
        key = data.draw(st.sampled_from(keys))
        raw = enc.side[key].copy().reshape(-1).view(np.uint8)
        if raw.size:
            for _ in range(data.draw(st.integers(1, 8))):
                raw[data.draw(st.integers(0, raw.size - 1))] = data.draw(st.integers(0, 255))
        arr = raw.view(enc.side[key].dtype).reshape(enc.side[key].shape)
        return kind, _replace(enc, side={**enc.side, key: arr}), False, q
    if kind == "codes_size":
        size = data.draw(st.integers(0, 2 * c.size + 8).filter(lambda v: v != c.size))
        pad = np.frombuffer(data.draw(st.binary(min_size=size, max_size=size)), np.uint8)
        codes = np.concatenate([c[:size], pad[: max(0, size - c.size)]])
        return kind, _replace(enc, codes=codes), True, q
    if kind == "shape":
        dims = data.draw(st.lists(st.integers(1, 80), min_size=1, max_size=3))
        shape = tuple(dims)
        if shape == enc.shape:
            shape = (*shape, 2)
        same = q.layout(shape) == q.layout(enc.shape)
        return kind, _replace(enc, shape=shape), not same, q
    if kind == "dtype":
        key = data.draw(st.sampled_from(keys))
        dt = np.dtype(data.draw(st.sampled_from(NUMERIC_DTYPES)))
        if dt == enc.side[key].dtype:
            dt = np.dtype(np.float64 if dt != np.float64 else np.int16)
        with np.errstate(all="ignore"):
            arr = enc.side[key].astype(dt)
        allowed = q.layout(enc.shape).side[key].dtypes
        return kind, _replace(enc, side={**enc.side, key: arr}), dt not in allowed, q
    if kind == "spec":
        other = mq.get(data.draw(st.sampled_from([s for s in SPECS if mq.get(s) != q])))
        same = other.layout(enc.shape) == q.layout(enc.shape) or _admits(q, other, enc)
        return kind, _replace(enc, spec=other.spec), not same, other
    if kind == "seed":
        seed = data.draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))
        if seed == enc.seed:
            seed = 1 if seed is None else seed + 1
        return kind, _replace(enc, seed=seed), True, q
    # side_names: drop one or add one
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(keys))
        side = {k: v for k, v in enc.side.items() if k != key}
        if key in q.layout(enc.shape).optional:  # another valid record
            return kind, _replace(enc, side=side), False, q
    else:
        name = data.draw(st.text("abcdefghij_", min_size=1, max_size=8))
        if name in enc.side:
            name += "_x"
        side = {**enc.side, name: np.zeros(data.draw(st.integers(0, 4)), np.float32)}
    return kind, _replace(enc, side=side), True, q


def _from_mmquant(exc: BaseException) -> bool:
    """Raised by a ``raise`` statement in mmquant (not from deep inside numpy)."""
    import traceback

    tb = traceback.extract_tb(exc.__traceback__)
    return (
        bool(tb)
        and "mmquant" in Path(tb[-1].filename).parts
        and "site-packages" not in (tb[-1].filename)
    )


@pytest.mark.parametrize("kern", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_fuzz_crafted_records(family, kern, data):
    spec = data.draw(st.sampled_from([s for s in SPECS if mq.get(s).name == family]))
    kind, bad, refuse, q = _mutate(data, spec)
    with kernels(kern):
        try:
            out = q.decode(bad)
        except (ValueError, TypeError) as exc:
            assert _from_mmquant(exc), f"{kind}: error from outside mmquant: {exc!r}"
            event(f"{kind}: refused")
            return
    assert not refuse, f"{spec}: {kind} mutation decoded instead of being refused"
    assert out.shape == bad.shape and np.isfinite(out).all()
    event(f"{kind}: decoded")


# ---------------------------------------------------------------------------------------------
# The kernels' entry points check the sizes they index with (defence in depth)
# ---------------------------------------------------------------------------------------------
def test_kernel_entry_points_check_sizes():
    pytest.importorskip("numba")
    from mmquant.kernels import formats as kf
    from mmquant.lattices.blockcode import voronoi_decode_blocks

    with pytest.raises(ValueError, match="too short"):
        kf.unpack(np.zeros(3, np.uint8), 4, 512)
    with pytest.raises(ValueError, match="padding"):
        kf.unpack(np.array([0x0F, 0, 0, 1], np.uint8), 4, 1)
    table = np.arange(16, dtype=np.float32)
    s = np.ones((2, 2), np.float32)
    for codes, g, n in ((np.zeros(63, np.uint8), 32, 32), (np.zeros(64, np.uint8), 8, 32)):
        with pytest.raises(ValueError, match="decode_table"):
            kf.decode_table(codes, table, s, g, n)
    out = kf.decode_table(np.full(64, 200, np.uint8), table, s, 16, 32)
    assert np.isnan(out).all()  # a code beyond the table reads NaN, never past it
    d = np.zeros((3, 8), np.int64)
    for backend in ("numba", "numpy"):
        with pytest.raises(ValueError, match="β index"):
            voronoi_decode_blocks(d, np.array([0, 1, 4]), "e8", 14, np.ones(4), None, backend)
        with pytest.raises(ValueError, match=r"\(N, 8\)"):
            voronoi_decode_blocks(d, np.zeros(2, np.int64), "e8", 14, np.ones(4), None, backend)


def test_packing_refuses_short_data_and_dirty_padding():
    from mmquant.packing import pack, unpack

    packed = pack(np.array([1, 2, 3], np.uint8), 4)
    assert unpack(packed, 4, 3).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="padding"):
        unpack(packed, 4, 2)  # the third code is where the padding should be
    with pytest.raises(ValueError, match="too short"):
        unpack(packed[:-1], 4, 3)
