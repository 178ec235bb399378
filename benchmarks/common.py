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


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks (no mmap/munmap per array): kernels, not page faults.

    A kernel that returns a fresh 32 MB array otherwise pays the page faults of new memory on
    every call, which on a virtual machine can cost more than the kernel and vary several-fold
    between runs. Returns False where glibc's ``mallopt`` is not available (nothing changes).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):
        return False
    return bool(ok)


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
