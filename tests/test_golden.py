"""Golden hashes: every registered spec encodes a fixed input to the same bytes, release after release.

``tests/data/golden.json`` holds, for each spec below, the SHA-256 of the encoded record (codes, every
side array with its name, dtype and shape, the shape and the spec) and of the decoded array, on a
fixed seeded input. A refactor must leave them unchanged; a deliberate change of an encoding
regenerates the file, and the commit says why::

    python tests/test_golden.py --update

The input is float32 with 24 rows of length 256 (a supported Hadamard size) plus a float64 case with
rows of length 200 (not a power of two, partial blocks for every block size).

The side arrays are hashed under the names they had when the hashes were taken (format version 3):
keys renamed since (:data:`mmquant.layout.LEGACY_SIDE_KEYS`, e.g. ``absmax`` and ``e8m0``, both
``scale`` before) are mapped back, so a rename keeps the hashes while any change of bytes shows.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import mmquant as mq
from mmquant.core import parse_spec
from mmquant.experiments.compare import default_quantizers
from mmquant.layout import LEGACY_SIDE_KEYS

GOLDEN = Path(__file__).parent / "data" / "golden.json"

# Configurations beyond compare's default list: union codes, fitted scales, dither, other rates,
# and the weight-only families (encoded with Σ_X = I, i.e. plain MSE).
EXTRA_SPECS = [
    "e8:mixed=true",
    "e8:fit=true",
    "e8:dither=true",
    "e8:q=7,betas=2",
    "e8:rule=no-overload",
    "d4:q=5",
    "e8ec:rate=2.5",
    "int:bits=3,group=64",
    "int:bits=4,group=32,affine=true",
    "timeshare:rate=0.3",
    "rtn:rate=8.0",
    "gptq:rate=8.0",
    "watersic:rate=8.0",
    "gptq:base=nvfp4",
    "gptq:base=int:bits=3;group=64",
    "tcq",
    "tcq:bits=2,L=8,V=2,code=3inst",
    "tcq:bits=3,L=10,code=lut",
    "tcqec:rate=2.5,L=5",
    "e8sic:rate=8.0",
    "tcqsic:rate=8.0",
    "tcq:bits=3,L=10,code=tstrat",
]


def specs() -> list[str]:
    """Every spec whose encoding is pinned (compare's default list, then the extras)."""
    out = [q.spec for q in default_quantizers()]
    return out + [s for s in EXTRA_SPECS if s not in out]


def inputs() -> dict[str, np.ndarray]:
    """The fixed inputs: float32 24×256 and float64 5×200 (heavy-tailed, one zero row)."""
    rng = np.random.default_rng(20261203)
    a = rng.standard_normal((24, 256)).astype(np.float32)
    b = rng.standard_t(4, size=(5, 200))
    b[2] = 0.0
    return {"f32_24x256": a, "f64_5x200": b}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def record_hashes(spec: str, x: np.ndarray) -> dict[str, str]:
    """SHA-256 of the encoded record and of its decode for ``spec`` on ``x``."""
    q = mq.get(spec)
    enc = q.encode(x)
    parts = [enc.spec.encode(), repr(enc.shape).encode(), enc.codes.tobytes()]
    old = {n: o for o, news in LEGACY_SIDE_KEYS.get(q.name, {}).items() for n in news}
    side = {old.get(k, k): v for k, v in enc.side.items()}
    for name in sorted(side):
        a = np.ascontiguousarray(side[name])
        parts += [name.encode(), a.dtype.str.encode(), repr(a.shape).encode(), a.tobytes()]
    out = np.ascontiguousarray(q.decode(enc))
    return {
        "encoded": _digest(*parts),
        "decoded": _digest(out.dtype.str.encode(), repr(out.shape).encode(), out.tobytes()),
    }


def compute() -> dict[str, dict[str, dict[str, str]]]:
    """Hashes of every pinned spec on every fixed input."""
    return {
        spec: {name: record_hashes(spec, x) for name, x in inputs().items()} for spec in specs()
    }


def _stored() -> dict[str, dict[str, dict[str, str]]]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("spec", specs())
def test_encoding_is_unchanged(spec: str) -> None:
    stored = _stored()
    assert spec in stored, f"no golden hash for {spec!r}: run python tests/test_golden.py --update"
    for name, x in inputs().items():
        assert record_hashes(spec, x) == stored[spec][name], f"{spec} on {name} changed"


def test_every_family_is_pinned() -> None:
    pinned = {parse_spec(s)[0] for s in _stored()}
    assert set(mq.available()) <= pinned


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_golden.py --update")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(specs())} specs)")
