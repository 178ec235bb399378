"""Tests of mmquant/checkpoints/runner.py: a Dask cluster gives the serial results, bit for bit."""

import json

import pytest

from mmquant.checkpoints import Runner, audit, open_checkpoint, quantize_checkpoint, select_tensors

pytest.importorskip("dask.distributed")


def test_dask_audit_and_export_bit_identical_to_serial(sharded, tmp_path):
    folder, _ = sharded
    names = select_tensors(open_checkpoint(folder))
    specs = ["int:bits=4", "nvfp4"]
    dask = Runner(workers=2, processes=False)
    serial = audit(folder, names, specs)
    remote = audit(folder, names, specs, runner=dask)
    assert remote.runner.startswith("dask")
    assert json.dumps([r.to_json() for r in remote.rows]) == json.dumps(
        [r.to_json() for r in serial.rows]
    )
    plan = dict.fromkeys(names, "nvfp4")
    quantize_checkpoint(folder, tmp_path / "s", plan)
    quantize_checkpoint(folder, tmp_path / "d", plan, runner=dask)
    for f in ("model-00001-of-00002.mmq", "model-00002-of-00002.mmq"):
        assert (tmp_path / "s" / f).read_bytes() == (tmp_path / "d" / f).read_bytes()


def test_runner_arguments():
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="workers"):
            Runner(workers=bad)
    with pytest.raises(ValueError, match="empty"):
        Runner(scheduler=" ")
    assert (
        Runner().describe() == "serial" and Runner(workers=3).describe() == "dask: 3 local workers"
    )
