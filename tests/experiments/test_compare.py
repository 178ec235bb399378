"""compare's product column: the ratio of float32 GEMV time to the GEMV from the codes."""

from __future__ import annotations

import math

import numpy as np

import mmquant as mq
from mmquant.cli.compare import _figure
from mmquant.experiments.compare import product_speed


def test_product_speed_is_a_positive_ratio_or_nan():
    at = np.random.default_rng(0).standard_normal((64, 512))
    enc = mq.get("int:bits=4").encode(at)
    r = product_speed(enc, at, repeat=3)
    assert math.isfinite(r) and r > 0
    assert math.isnan(product_speed(enc, at, repeat=0))  # warm-up only: nothing timed
    assert math.isnan(product_speed(mq.get("tcqec").encode(at), at))  # no product kernel


def test_small_speeds_keep_two_significant_digits():
    assert _figure(0.0553) == "0.055"
    assert _figure(46.5) == "46.50"
    assert _figure(0.0) == "0"
