"""No parameter makes time or memory explode: limits refused by get(), bounded peak memory.

Every registered family's numeric parameters have a stated range (get() refuses values outside
it with a message naming the parameter); the encoders' and decoders' peak memory, measured by
tracemalloc (which sees numpy's and numba's array allocations), stays within a stated multiple
of the input (the table in benchmarks/README.md, from benchmarks/bench_memory.py).
"""

from __future__ import annotations

import dataclasses
import tracemalloc
import typing

import numpy as np
import pytest

import mmquant
from mmquant.core import registry
from mmquant.lattices import voronoi
from mmquant.lattices.entropy_coded import RATE_MAX, TABLE_MIN
from mmquant.weightonly.quantizers import WeightOnlyQuantizer


def _numeric_fields(cls: type) -> list[tuple[str, type]]:
    """(name, int or float) of the dataclass fields that take a number (bool excluded)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        h = hints[f.name]
        args = set(typing.get_args(h)) or {h}
        if bool in args:
            continue
        if int in args:
            out.append((f.name, int))
        elif float in args:
            out.append((f.name, float))
    return out


FIELDS = [(name, f, t) for name, cls in sorted(registry().items()) for f, t in _numeric_fields(cls)]


def test_every_family_has_its_numeric_parameters_checked():
    names = {(n, f) for n, f, _ in FIELDS}
    for want in [("datacompander", "bins"), ("e8", "betas"), ("e8ec", "rate"), ("int", "group")]:
        assert want in names


@pytest.mark.parametrize(("family", "field", "kind"), FIELDS)
def test_extreme_values_are_refused_naming_the_parameter(family, field, kind):
    """A huge value (and a hugely negative one) of every numeric parameter is refused by get()."""
    for value in (10**11, -(10**11)) if kind is int else (1e11, -1e11):
        with pytest.raises((ValueError, TypeError), match=field):
            mmquant.get(f"{family}:{field}={value}")


@pytest.mark.parametrize(
    ("spec", "limit"),
    [
        ("datacompander:bins=100000000000", "65536"),
        ("datacompander:bins=65537", "65536"),
        ("datacompander:refine=101", "100"),
        ("e8ec:rate=16", str(RATE_MAX)),
        ("e8:betas=64", "16"),
        ("e8:betas=17", "16"),
        ("d4:betas=64,rule=no-overload", r"\[1, 16\]"),
        ("e8:betas=9,rule=no-overload", "NO_OVERLOAD_SCALES_MAX = 8"),
        ("zn:betas=9,rule=no-overload,fit=true", "NO_OVERLOAD_SCALES_MAX = 8"),
        ("e8:group=33", "at most 32 blocks"),
        ("e8:group=64", "at most 32 blocks"),
        ("e8:betas=2,group=65", "64"),
        ("e8:betas=8,group=22", "at most 21 blocks"),
        ("e8:q=257", "256"),
    ],
)
def test_limits_are_named(spec, limit):
    with pytest.raises(ValueError, match=limit):
        mmquant.get(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "datacompander:bins=65536,refine=100",
        "e8ec:rate=12",
        "e8:betas=16",
        "e8:betas=8,rule=no-overload",
        "e8:betas=2,group=64",
        "e8:betas=8,group=21",
        "e8:group=32",
        "e8:q=256",
    ],
)
def test_configurations_at_the_limits_are_accepted(spec):
    q = mmquant.get(spec)  # (the scales are optimised lazily: nothing is computed here)
    assert mmquant.get(q.spec) == q


def test_explicit_scales_are_not_optimised_so_no_overload_may_use_sixteen():
    betas = tuple(0.05 * (i + 1) for i in range(16))
    q = voronoi.E8Voronoi(betas=betas, rule="no-overload")
    x = np.random.default_rng(0).standard_normal((4, 64))
    assert q.decode(q.encode(x)).shape == x.shape


def test_e8ec_model_tables_are_bounded_by_the_input():
    """A rate whose symbol tables would dwarf a small input is refused at encode, naming the
    limit; the same rate on enough entries, and a lower rate on the small input, work."""
    small = np.random.default_rng(1).standard_normal((2, 8))
    with pytest.raises(ValueError, match=rf"model tables of \d+ symbols.*limit.*{TABLE_MIN}"):
        mmquant.get("e8ec:rate=12").encode(small)
    enc = mmquant.get("e8ec:rate=4").encode(small)
    tables = sum(v.size for k, v in enc.side.items() if k == "model_freq")
    assert tables <= TABLE_MIN


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------
#: Stated bound: peak memory of encode and of decode ≤ 8 × the input's bytes (float32 input of
#: 2048 × 1024 entries; measured peaks are in benchmarks/README.md).
BOUND = 8.0

#: Weight-only families are measured separately below (their input includes Σ_X).
WEIGHT_ONLY = {n for n, c in registry().items() if issubclass(c, WeightOnlyQuantizer)}
SPECS = [
    *sorted(set(registry()) - WEIGHT_ONLY),
    "int:group=-1",
    "int:bits=8,affine=true",
    "fp:fmt=e2m1,group=16",
    "datacompander:refine=5",
    "e8:group=32",
    "e8:fit=true",
    "e8:dither=true,center=true",
    "e8:q=14;15;15;13",
]


def _peak(fn: typing.Callable[[], object]) -> tuple[int, object]:
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, out


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2048, 1024)).astype(np.float32)


@pytest.mark.parametrize("spec", SPECS)
def test_peak_memory_is_a_bounded_multiple_of_the_input(spec, big):
    q = mmquant.get(spec)
    q.decode(q.encode(big[:16]))  # warm up: kernels, cached designs, rotation tables
    enc_peak, enc = _peak(lambda: q.encode(big))
    dec_peak, out = _peak(lambda: q.decode(enc))
    # the measurement sees what the encoder and decoder allocate (numba kernels included)
    assert enc_peak >= enc.codes.nbytes
    assert dec_peak >= out.nbytes
    assert enc_peak <= BOUND * big.nbytes, f"{spec}: encode peak {enc_peak / big.nbytes:.2f}×"
    assert dec_peak <= BOUND * big.nbytes, f"{spec}: decode peak {dec_peak / big.nbytes:.2f}×"


@pytest.mark.parametrize("spec", ["int:group=65536", "fp:group=65536", "nf4:group=65536"])
@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_a_group_longer_than_the_row_costs_no_padding(monkeypatch, spec, kernels):
    """The numpy path padded every 64-entry row to the group: 2300-9200× the input."""
    if kernels == "numpy":
        monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    q = mmquant.get(spec)
    x = np.random.default_rng(4).standard_normal((4096, 64)).astype(np.float32)
    enc_peak, enc = _peak(lambda: q.encode(x))
    dec_peak, out = _peak(lambda: q.decode(enc))
    assert enc_peak <= BOUND * x.nbytes and dec_peak <= BOUND * x.nbytes
    np.testing.assert_array_equal(out, mmquant.get(spec.split(":")[0] + ":group=0").quantize(x))


@pytest.mark.parametrize("spec", ["fp", "mxfp4", "nvfp4", "nf4", "int", "timeshare", "e8ec", "e8"])
def test_peak_memory_numpy_kernels(monkeypatch, spec, big):
    """The numpy reference path (no numba) is bounded too."""
    monkeypatch.setenv("MMQUANT_KERNELS", "numpy")
    x = big
    q = mmquant.get(spec)
    q.decode(q.encode(x[:16]))
    enc_peak, enc = _peak(lambda: q.encode(x))
    dec_peak, _ = _peak(lambda: q.decode(enc))
    assert enc_peak <= BOUND * x.nbytes, f"{spec}: encode peak {enc_peak / x.nbytes:.2f}×"
    assert dec_peak <= BOUND * x.nbytes, f"{spec}: decode peak {dec_peak / x.nbytes:.2f}×"


# ---------------------------------------------------------------------------------------------
# Peak memory of the weight-only families
# ---------------------------------------------------------------------------------------------
#: Stated bound for the weight-only families: encode peak ≤ 20 × (bytes of W as float32 + bytes
#: of Σ_X as float64 n×n); decode peak ≤ 8 × (bytes of W as float32 + 8·m² for a rotated record
#: of m live inputs). They work on float64 copies of W (W, W·L, the SIC's targets, codes and
#: reconstruction) and on Σ_X, its symmetrised copy and its Cholesky factor; without ``sigma``
#: the identity counts as Σ_X (allowed for n ≤ max(1024, 4a) only). Measured peaks: ≤ 16.6 and
#: ≤ 8.0 on the shapes below.
WEIGHT_ONLY_BOUND = 20.0
WEIGHT_ONLY_SPECS = [
    "rtn",
    "gptq",
    "gptq:rate=None,grid=int,group=64",
    "watersic",
    "watersic:rotate=true,rescale=both",
    "e8sic",
    "e8sic:rotate=true",
    "tcqsic",
    "tcqsic:rotate=true",
    "watersic:rate=None,step=0.00001",  # a step whose codes span ~10^6 values
]


@pytest.mark.parametrize("shape", [(1024, 128), (96, 384)])
@pytest.mark.parametrize("spec", WEIGHT_ONLY_SPECS)
def test_weight_only_peak_memory_is_bounded(spec, shape):
    n = shape[1]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    q = mmquant.get(spec)
    q.decode(q.encode(x[:16]))  # warm up
    enc_peak, enc = _peak(lambda: q.encode(x))
    dec_peak, out = _peak(lambda: q.decode(enc))
    assert out.shape == shape and enc_peak >= enc.codes.nbytes
    enc_input = x.nbytes + 8 * n * n
    dec_input = x.nbytes + (8 * n * n if q.rotate else 0)
    assert enc_peak <= WEIGHT_ONLY_BOUND * enc_input, f"{spec}: {enc_peak / enc_input:.2f}×"
    assert dec_peak <= 8.0 * dec_input, f"{spec}: decode {dec_peak / dec_input:.2f}×"


def test_weight_only_identity_covariance_is_bounded_by_the_rows():
    """Without sigma, a wide W would make the n×n identity (and its factor) dwarf W."""
    from mmquant.weightonly.quantizers import MAX_IDENTITY_INPUTS

    for spec in sorted(WEIGHT_ONLY):
        with pytest.raises(ValueError, match="pass sigma"):
            mmquant.get(spec).encode(np.ones((2, 50_000), np.float32))
    x = np.random.default_rng(6).standard_normal((4, MAX_IDENTITY_INPUTS)).astype(np.float32)
    assert mmquant.get("rtn:rate=6.0").encode(x).shape == x.shape
