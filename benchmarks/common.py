"""Shared helpers for the benchmark scripts: the machine, memcpy bandwidth, best-of timing."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np


def machine() -> str:
    """One line describing this machine (CPU model, cores, numpy version)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}, Python {platform.python_version()}"
    )


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Smallest wall-clock time of ``repeat`` calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memcpy_rate(x: np.ndarray, repeat: int = 5) -> float:
    """Entries per second of ``np.copyto`` of ``x`` into a preallocated array (the yardstick)."""
    y = np.empty_like(x)
    return x.size / best_time(lambda: np.copyto(y, x), repeat)
