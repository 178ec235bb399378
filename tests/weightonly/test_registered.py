"""RTN, GPTQ and WaterSIC as registered quantizers: specs, records, files and corrupt records."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mmquant as mq
from mmquant.io import FormatError, load_one
from mmquant.weightonly import e8sic, gptq, quantize_layer, rtn, watersic


def _problem(a: int = 48, n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((a, n))
    x = rng.standard_normal((4 * n, n)) * np.linspace(0.2, 2.0, n)
    s = x.T @ x / x.shape[0]
    s[7, :] = 0.0
    s[:, 7] = 0.0  # a dead input: the records store the live mask
    return w, s


# spec -> the functional call that must give the same result
CASES = {
    "rtn:rate=3.0": lambda w, s: rtn(w, s, 3.0),
    "rtn:rate=None,grid=int,bits=3,group=16": lambda w, s: rtn(w, s, grid="int", bits=3, group=16),
    "gptq:rate=3.0": lambda w, s: gptq(w, s, 3.0),
    "gptq:rate=3.0,rotate=true,seed=1": lambda w, s: gptq(w, s, 3.0, rotate=True, seed=1),
    "gptq:rate=None,grid=int,damp=0.01": lambda w, s: gptq(w, s, grid="int", damp=0.01),
    "watersic:rate=3.0": lambda w, s: watersic(w, s, 3.0),
    "watersic:rate=2.5,rescale=both": lambda w, s: watersic(w, s, 2.5, rescale="both"),
    "watersic:rate=None,step=0.4,lmmse=false": lambda w, s: watersic(w, s, step=0.4, lmmse=False),
    "watersic:rate=3.0,rotate=true,seed=2": lambda w, s: watersic(w, s, 3.0, rotate=True, seed=2),
    "e8sic:rate=3.0": lambda w, s: e8sic(w, s, 3.0),
    "e8sic:rate=2.5,rescale=both,mmse=0.0": lambda w, s: e8sic(w, s, 2.5, rescale="both", mmse=0),
    "e8sic:rate=None,step=0.4,lmmse=false": lambda w, s: e8sic(w, s, step=0.4, lmmse=False),
    "e8sic:rate=3.0,rotate=true,seed=2": lambda w, s: e8sic(w, s, 3.0, rotate=True, seed=2),
}


@pytest.mark.parametrize("spec", list(CASES))
def test_registered_equals_the_functions_bit_for_bit(spec, tmp_path):
    w, s = _problem()
    q = mq.get(spec)
    assert q.spec == spec and mq.get(q.spec) == q
    enc = q.encode(w, sigma=s)
    old = CASES[spec](w, s)
    out = q.decode(enc)
    assert out.tobytes() == old.w_hat.tobytes()
    assert enc.bits_per_entry == old.bits_per_weight
    assert enc.side_bits_per_entry == old.side_bits_per_weight
    assert enc.codes.tobytes() == old.stream.tobytes()
    assert enc.stats["wmse"] == old.wmse and enc.stats["entropy"] == old.entropy
    assert enc.seed == old.rotation_seed
    assert "live" in enc.side
    path = tmp_path / "w.mmq"
    mq.save(path, {"layer": enc})
    back = mq.load(path)["layer"]
    assert back.spec == spec and q.decode(back).tobytes() == old.w_hat.tobytes()


def test_quantize_layer_goes_through_the_registered_quantizers():
    w, s = _problem()
    for method, spec in [("gptq-rot", "gptq:rate=3.0,rotate=true,seed=5"), ("rtn", "rtn:rate=3.0")]:
        q = quantize_layer(method, w, s, 3.0, seed=5)
        enc = mq.get(spec).encode(w, sigma=s)
        assert q.bits_per_weight == enc.bits_per_entry
        assert q.w_hat.tobytes() == mq.get(spec).decode(enc).tobytes()


def test_identity_covariance_by_default():
    w, _ = _problem()
    for spec in ("rtn", "gptq", "watersic", "e8sic"):
        q = mq.get(spec)
        assert q.decode(q.encode(w)).tobytes() == q.decode(q.encode(w, sigma=np.eye(40))).tobytes()


def test_specs_validate_their_parameters():
    assert mq.get("watersic:step=0.5").rate is None  # a step replaces the rate search
    assert mq.get("gptq:grid=int").rate is None  # so does a fixed-width grid
    for bad, msg in [
        ("watersic:rate=0", "rate"),
        ("watersic:rate=40", "rate"),
        ("watersic:rate=3,step=0.5", "rate or step"),
        ("watersic:rate=None", "give a rate"),
        ("watersic:rescale=rows", "rescale"),
        ("gptq:grid=int,rate=3", "rate or step"),
        ("gptq:grid=int,step=0.5", "step"),
        ("gptq:bits=1,grid=int", "bits"),
        ("gptq:group=0,grid=int", "group"),
        ("gptq:damp=-1", "damp"),
        ("rtn:dead=1", "dead"),
        ("rtn:seed=-1", "seed"),
        ("rtn:grid=nf4", "grid"),
    ]:
        with pytest.raises(ValueError, match=msg):
            mq.get(bad)
    with pytest.raises(ValueError, match="unknown parameter 'damp'"):
        mq.get("rtn:damp=0.1")


def test_not_in_compare_and_keywords_checked():
    for name in ("rtn", "gptq", "watersic", "e8sic"):
        assert name in mq.available() and mq.registry()[name].variants() == []
    w, s = _problem()
    with pytest.raises(TypeError, match="sigmaa"):
        mq.get("watersic").encode(w, sigmaa=s)
    with pytest.raises(TypeError, match="sigma"):
        mq.get("int").encode(w, sigma=s)
    with pytest.raises(ValueError, match="2-D"):
        mq.get("rtn").encode(w.reshape(-1))
    with pytest.raises(ValueError, match="side information"):
        mq.get("watersic:rate=0.5").encode(w[:4], sigma=s)


def _corrupt(enc: mq.Encoded) -> list[tuple[str, mq.Encoded]]:
    side = dict(enc.side)
    live = side["live"]
    u8 = np.array([9, 0, 0, 1], np.uint8)
    out = [
        ("3-D shape", dataclasses.replace(enc, shape=(2, *enc.shape))),
        ("live all dead", dataclasses.replace(enc, side={**side, "live": np.zeros_like(live)})),
        ("live all set", dataclasses.replace(enc, side={**side, "live": np.full_like(live, 255)})),
        ("no codes", dataclasses.replace(enc, codes=enc.codes[:0])),
        ("codes plus a word", dataclasses.replace(enc, codes=np.concatenate([enc.codes, u8]))),
        ("seed", dataclasses.replace(enc, seed=3)),
    ]
    if "bounds" in side:
        out.append(
            (
                "bounds too wide",
                dataclasses.replace(
                    enc, side={**side, "bounds": np.array([-(2**29), 2**29], "i4")}
                ),
            )
        )
        out.append(
            (
                "zero last word",
                dataclasses.replace(enc, codes=np.concatenate([enc.codes[:-4], 0 * u8])),
            )
        )
    if "row_scale" in side and side["row_scale"].shape[1] > 1:
        rs = side["row_scale"][:, :-1]
        out.append(("row_scale groups", dataclasses.replace(enc, side={**side, "row_scale": rs})))
    return out


@pytest.mark.parametrize("spec", list(CASES))
def test_corrupt_records_are_refused(spec, tmp_path):
    w, s = _problem()
    q = mq.get(spec)
    enc = q.encode(w, sigma=s)
    for label, bad in _corrupt(enc):
        with pytest.raises(ValueError):
            q.decode(bad)
            pytest.fail(f"{label} decoded")  # pragma: no cover
        path = tmp_path / "bad.mmq"
        if len(bad.shape) == 2:
            mq.save(path, bad)
            with pytest.raises(FormatError):
                load_one(path)
                pytest.fail(f"{label} loaded")  # pragma: no cover


def test_live_mask_padding_bits_are_refused():
    w, s = _problem(n=37)
    q = mq.get("watersic")
    enc = q.encode(w, sigma=s[:37, :37])
    live = enc.side["live"].copy()
    live[-1] |= 1  # 37 inputs: the last byte has 3 bits of padding
    with pytest.raises(ValueError, match="after the last input"):
        q.decode(dataclasses.replace(enc, side={**enc.side, "live": live}))


def test_wide_rotations_are_bounded():
    """A rotated record may not make the decoder build a huge rotation (QR of m×m)."""
    q = mq.get("gptq:rotate=true")
    enc = q.encode(np.random.default_rng(0).standard_normal((40, 24)))
    wide = dataclasses.replace(
        enc,
        shape=(1, 5000),
        codes=np.ones(1000, np.uint8),
        side={**enc.side, "std_index": np.ones(5000, np.uint8)},
    )
    with pytest.raises(ValueError, match="rotates 5000 live inputs"):
        q.decode(wide)


def test_inspect_and_dequantize_a_weight_only_file(tmp_path, capsys):
    from mmquant.cli import main

    w, s = _problem()
    q = mq.get("watersic:rate=3.0,rotate=true,seed=2")
    enc = q.encode(w, sigma=s)
    path, out = tmp_path / "w.mmq", tmp_path / "w.npy"
    mq.save(path, {"layer": enc})
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "watersic:rate=3.0,rotate=true,seed=2" in text and f"{enc.bits_per_entry:.4f}" in text
    assert main(["dequantize", str(path), str(out)]) == 0
    assert np.load(out).tobytes() == q.decode(enc).tobytes()
    src, mmq = tmp_path / "w_in.npy", tmp_path / "q.mmq"  # the CLI quantizes with Σ_X = I
    np.save(src, w)
    assert main(["quantize", str(src), str(mmq), "--spec", "gptq:rate=3"]) == 0
    ref = mq.get("gptq:rate=3").encode(w)
    assert mq.load(mmq)[next(iter(mq.load(mmq)))].codes.tobytes() == ref.codes.tobytes()
