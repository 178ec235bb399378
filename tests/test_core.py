import dataclasses
import json

import numpy as np
import pytest

import mmquant as mq
from mmquant import core
from mmquant.core import Encoded, Quantizer, format_spec, get, parse_spec, register
from mmquant.packing import pack, unpack


@dataclasses.dataclass(frozen=True)
class GridQuantizer(Quantizer):
    """Test-only quantizer: round to a grid of step 2^-bits, codes clipped to 8 bits."""

    bits: int = 4
    step: float = 0.25
    tags: tuple[float, ...] = ()
    flag: bool = False
    label: str | None = None

    def _encode(self, x):
        c = np.clip(np.rint(x / self.step) + 128, 0, 255).astype(np.uint8)
        return Encoded(pack(c, 8), {"dummy": np.zeros(2, np.float16)}, x.shape, self.spec)

    def _decode(self, enc):
        c = unpack(enc.codes, 8, enc.entries).astype(np.float64)
        return ((c - 128) * self.step).reshape(enc.shape)


@pytest.fixture(autouse=True)
def _registered():
    """Register the test-only family for this module's tests only (the fuzzers must not see it)."""
    register("testgrid")(GridQuantizer)
    yield
    del core._REGISTRY["testgrid"]


def test_spec_round_trip():
    q = get("testgrid:bits=3,step=0.5,tags=1.5;2,flag=true,label=abc")
    assert q == GridQuantizer(3, 0.5, (1.5, 2.0), True, "abc")
    assert get(q.spec) == q
    assert format_spec(GridQuantizer()) == "testgrid"
    assert get("testgrid:label=none").label is None
    assert Quantizer.from_json(json.loads(json.dumps(q.to_json()))) == q
    assert hash(q) == hash(get(q.spec))


def test_parse_spec():
    assert parse_spec(" int : bits=4 , group=32 ") == ("int", {"bits": "4", "group": "32"})
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("int:bits")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("int:bits=4,bits=5")
    with pytest.raises(ValueError, match="empty quantizer name"):
        parse_spec(":bits=4")
    with pytest.raises(TypeError, match="string"):
        parse_spec(4)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match=r"unknown quantizer 'nope'; available: .*testgrid"):
        get("nope")
    with pytest.raises(ValueError, match="unknown parameter 'bitz'"):
        get("testgrid:bitz=4")
    with pytest.raises(ValueError, match="expected int"):
        get("testgrid:bits=four")
    assert "testgrid" in mq.available()


def test_encode_decode_and_measured_rate():
    q = GridQuantizer()
    x = np.arange(12.0).reshape(3, 4) / 8
    enc = q.encode(x)
    assert enc.shape == (3, 4)
    assert enc.code_bytes == 16  # 12 codes of 8 bits, padded to 16
    assert enc.side_bytes == 4
    assert enc.bits_per_entry == pytest.approx(8 * 20 / 12)
    np.testing.assert_allclose(q.decode(enc), np.rint(x / 0.25) * 0.25)
    np.testing.assert_allclose(q.quantize(x), q.decode(enc))
    with pytest.raises(ValueError, match="cannot decode it"):
        GridQuantizer(bits=5).decode(enc)
    with pytest.raises(TypeError, match="Encoded"):
        q.decode(np.zeros(3))


def test_encoded_is_read_only_and_checked():
    enc = GridQuantizer().encode(np.ones((2, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        enc.shape = (4,)
    with pytest.raises(TypeError):
        enc.side["x"] = np.zeros(1)
    with pytest.raises(TypeError, match="uint8"):
        Encoded(np.zeros(3, np.int32), {}, (3,), "testgrid")


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        (np.array([1.0, np.nan]), ValueError, "NaN"),
        (np.array([1.0, np.inf]), ValueError, "Inf"),
        (np.zeros((0, 3)), ValueError, "empty"),
        (np.array([True, False]), TypeError, "dtype bool"),
        (np.array([1 + 2j]), TypeError, "complex"),
        (np.array(["a"]), TypeError, "dtype"),
        (np.float64(3.0), ValueError, "at least 1 dimension"),
        ([[1.0, 2.0], [3.0]], TypeError, "cannot convert"),
    ],
)
def test_bad_input_is_named(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        GridQuantizer().encode(bad)


def test_dtype_conversions():
    q = GridQuantizer()
    assert q.encode(np.ones(4, np.float16)).shape == (4,)
    np.testing.assert_allclose(q.quantize(np.array([1, 2, 3])), [1, 2, 3])


def test_plugin_lists_fail_loudly():
    from mmquant.core import import_plugins

    import_plugins(["mmquant.metrics"], "test")  # an existing module imports quietly
    with pytest.raises(ImportError, match="no_such_module"):
        import_plugins(["mmquant.no_such_module"], "test plugins")


def test_match_rate_is_the_one_rule_of_every_family():
    from mmquant.core import RATE_TOLERANCE, match_rate, registry

    qs = [mq.get("int:bits=3"), mq.get("int"), mq.get("nvfp4"), mq.get("mxfp4")]
    assert [q.spec for q in match_rate(qs, 4.25)] == ["mxfp4"]
    assert [q.spec for q in match_rate(qs, 4.0)] == ["mxfp4"]
    assert [q.spec for q in match_rate(qs[:2], 4.0)] == ["int:bits=3", "int"]  # a tie keeps both
    assert match_rate(qs, 4.0 + 3 * RATE_TOLERANCE) == []
    # every family's variants for a rate are its candidates picked by that rule (the lattice
    # codes add, to each, its sibling with the scale indices in groups)
    for cls in registry().values():
        for rate in (1.0, 3.0, 4.0, 6.5):
            picked = [q.spec for q in cls.variants(rate)]
            matched = match_rate(cls.candidates(rate), rate)
            if cls.name in ("e8", "d4", "zn"):
                assert picked == [s for q in matched for s in (q.spec, f"{q.spec},group=32")]
            else:
                assert picked == [q.spec for q in matched]
            for q in matched:
                assert abs(q.nominal_rate(4096) - rate) <= RATE_TOLERANCE + 1e-9
