"""The Gaussian weight-only benchmark's table: one row per method of GAUSSIAN_METHODS."""

import math

import pytest

from mmquant.experiments.weight_only import GAUSSIAN_METHODS, weight_only_gaussian


def test_rows_follow_the_method_list():
    assert {"rtn", "gptq", "gptq-rot", "watersic", "e8sic"} <= set(GAUSSIAN_METHODS)
    res = weight_only_gaussian(rates=(3.0,), a=64, n=16, methods=["watersic", "e8sic"])
    assert res.columns == [
        "R",
        "watersic bits",
        "watersic gap",
        "e8sic bits",
        "e8sic gap",
        "gptq−watersic",
    ]
    (row,) = res.rows
    assert row[0] == 3.0 and all(math.isfinite(x) for x in row[1:5])
    assert math.isnan(row[5])  # no gptq row asked
    assert set(res.details["curves"]) == {"watersic", "e8sic"}


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="trellis"):
        weight_only_gaussian(rates=(3.0,), a=16, n=8, methods=["trellis"])
