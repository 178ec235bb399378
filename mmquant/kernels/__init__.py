"""Numba kernels (imported lazily: numba is needed only when a kernel runs)."""

from __future__ import annotations

import os

__all__ = ["use_numba"]


def use_numba(backend: str) -> bool:
    """Whether to run the numba kernel for ``backend`` (``"auto"``, ``"numba"`` or ``"numpy"``).

    ``"auto"`` uses numba when it is installed, unless the environment variable
    ``MMQUANT_KERNELS=numpy`` asks for the numpy reference; ``"numba"`` requires it.
    """
    if backend == "numpy" or os.environ.get("MMQUANT_KERNELS", "").lower() == "numpy":
        return False
    if backend not in ("auto", "numba"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    try:
        import numba  # noqa: F401
    except ImportError:
        if backend == "numba":
            raise
        return False
    return True
