"""Numba kernels (imported lazily: numba is needed only when a kernel runs).

The kernel modules compile on first call and keep the machine code in numba's on-disk cache when
one can be written (:func:`numba_cache`); in a read-only install without a writable cache folder
they compile in every process instead of failing.
"""

from __future__ import annotations

import functools
import os
import warnings

__all__ = ["numba_cache", "use_numba"]


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


def _cache_probe() -> int:  # pragma: no cover - never compiled, only located
    return 0


@functools.cache
def numba_cache() -> bool:
    """Whether numba can cache the kernels of this package on disk (decided once per process).

    Every ``njit`` of :mod:`mmquant.kernels` passes this as ``cache=``. numba looks for a
    writable cache folder when a function is decorated with ``cache=True`` (``NUMBA_CACHE_DIR``,
    then ``__pycache__`` beside the source, then the user's cache folder) and raises
    ``RuntimeError`` at import when there is none, as in a read-only install run by a user
    without a writable home. The same search is made here for a probe function in this folder
    (nothing is compiled); when it fails, the kernels are compiled without caching, in every
    process, and a ``RuntimeWarning`` says how to cache them.

    Raises
    ------
    ImportError
        numba is not installed.
    """
    import numba

    try:
        numba.njit(cache=True)(_cache_probe)
    except Exception as exc:  # numba: RuntimeError "no locator available"; OSError
        warnings.warn(
            f"numba cannot cache mmquant's kernels on disk ({exc}); they are compiled in every "
            "process. Set NUMBA_CACHE_DIR to a writable folder to cache them.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True
