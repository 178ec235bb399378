"""Numba kernels, and the one switch that decides whether they run.

Every kernel call site asks :func:`resolve` (or its shortcuts :func:`load` and :func:`use_numba`)
which backend to use:

* ``"numpy"`` -- the numpy reference everywhere; numba is not even imported;
* ``"numba"`` -- the numba kernels (bit-exact with the reference); an ``ImportError`` that says
  how to install numba if it is missing;
* ``"auto"`` (the default) -- the environment variable ``MMQUANT_KERNELS`` decides (``auto``,
  ``numpy`` or ``numba``; unset means ``auto``), and ``auto`` there means numba when it can be
  imported, numpy otherwise.

An explicit ``"numpy"`` or ``"numba"`` given to a function (the ``backend=`` arguments of
:mod:`mmquant.lattices`) wins over the environment variable.

The kernel modules (:mod:`~mmquant.kernels.formats`, :mod:`~mmquant.kernels.compander`, for
the lattice codes :mod:`~mmquant.kernels.lattice_closest`, :mod:`~mmquant.kernels.lattice_block`,
:mod:`~mmquant.kernels.lattice_groups`, for the trellis codes :mod:`~mmquant.kernels.trellis` and
:mod:`~mmquant.kernels.trellis_rd`, the inverse rotation :mod:`~mmquant.kernels.rotation`, and
for products from the codes :mod:`~mmquant.kernels.lattice_products` and
:mod:`~mmquant.kernels.products`, whose SIMD inner loops are numba intrinsics in
:mod:`~mmquant.kernels.simd`) are imported only when a kernel of theirs runs; they import nothing
from the rest of the package (what they need is passed in as arguments); each compiles its
functions on their first call and keeps the machine code in numba's on-disk cache when one can be
written (:func:`numba_cache`); in a read-only install without a writable cache folder they compile
in every process instead of failing.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` in the environment unless it (or
``GOMP_SPINCOUNT``) is set already: numba's parallel kernels run on GNU OpenMP, whose idle
threads otherwise spin after each parallel region and take the cores from numpy's BLAS threads
(and these from them). Measured on 2 cores, a 4096² int4 GEMV from the codes alternated with
numpy's float32 GEMV, both on 2 threads: 2.70 ms and 4.79 ms spinning, 0.44 ms and 1.37 ms
passive; batch 16 4.18 and 9.68 ms against 3.22 and 5.96 ms. It takes effect where OpenMP is
loaded after this import (numba loads it at its first parallel kernel); set the variable
yourself (``ACTIVE``) to keep spinning threads.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "load",
    "numba_cache",
    "on_compile",
    "product_options",
    "resolve",
    "use_numba",
]

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # see the module docstring

#: Values of a ``backend`` argument and of the environment variable :data:`ENV_VAR`.
BACKENDS = ("auto", "numpy", "numba")
#: Environment variable read when the backend asked for is ``"auto"``.
ENV_VAR = "MMQUANT_KERNELS"
#: The kernel modules of this package (:func:`load` takes one of these names).
MODULES = (
    "formats",
    "compander",
    "lattice_closest",
    "lattice_block",
    "lattice_groups",
    "trellis",
    "trellis_rd",
    "products",
    "rotation",
    "lattice_products",
)


def resolve(backend: str = "auto") -> str:
    """The backend that runs: ``"numpy"`` or ``"numba"`` (see the module docstring).

    Parameters
    ----------
    backend : {"auto", "numpy", "numba"}
        What the caller asks for; ``"auto"`` defers to ``MMQUANT_KERNELS``.

    Returns
    -------
    str
        ``"numba"`` or ``"numpy"``.

    Raises
    ------
    ValueError
        ``backend`` or ``MMQUANT_KERNELS`` is not one of ``auto``, ``numpy``, ``numba``.
    ImportError
        ``"numba"`` was asked for (argument or environment) and numba cannot be imported.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'numpy' or 'numba', got {backend!r}")
    source = "backend"
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(
                f"{ENV_VAR} must be 'auto', 'numpy' or 'numba', got {os.environ[ENV_VAR]!r}"
            )
        backend, source = env, ENV_VAR
    if backend == "numpy":
        return "numpy"
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        if backend == "auto":
            return "numpy"
        raise ImportError(
            f"the numba kernels were asked for ({source}='numba') but numba cannot be imported "
            f"({exc}); install it with `pip install numba`, or use 'auto' or 'numpy'"
        ) from exc
    return "numba"


def use_numba(backend: str = "auto") -> bool:
    """Whether the numba kernels run for ``backend``: ``resolve(backend) == "numba"``."""
    return resolve(backend) == "numba"


def load(name: str, backend: str = "auto") -> ModuleType | None:
    """The kernel module ``mmquant.kernels.<name>`` if the numba backend runs, else ``None``.

    Parameters
    ----------
    name : str
        One of :data:`MODULES`.
        Which kernel module.
    backend : {"auto", "numpy", "numba"}
        Passed to :func:`resolve`.

    Returns
    -------
    module or None
        ``None`` means: use the numpy reference (numba is then not imported).
    """
    if name not in MODULES:
        raise ValueError(f"no kernel module {name!r}; there are {', '.join(MODULES)}")
    if resolve(backend) == "numpy":
        return None
    return importlib.import_module(f"mmquant.kernels.{name}")


@contextlib.contextmanager
def on_compile(
    start: Callable[[str], None], end: Callable[[str, float], None] | None = None
) -> Iterator[None]:
    """Within the block, report when numba compiles a kernel of this package (for user interfaces).

    ``start(name)`` is called when numba begins to compile one of the kernels of
    :mod:`mmquant.kernels` (the outermost compilation: not the helpers it compiles on the way),
    ``end(name, seconds)`` when it is done. A kernel found in numba's disk cache is loaded, not
    compiled, and reports nothing. When the numba backend is not in use (:func:`resolve`) the
    block runs as it is and numba is not imported. The library prints nothing itself; the CLI
    shows a progress message with this.

    Parameters
    ----------
    start : callable
        Called with the kernel's qualified name, e.g. ``"lattice_block._encode_all"``.
    end : callable, optional
        Called with the name and the compilation's wall time in seconds.
    """
    if resolve() != "numba":
        yield
        return
    from numba.core import event

    class _Listener(event.Listener):
        def __init__(self) -> None:
            self.stack: list[tuple[str, float] | None] = []

        def on_start(self, ev: event.Event) -> None:
            func = getattr(ev.data.get("dispatcher"), "py_func", None)
            module = getattr(func, "__module__", "") or ""
            outer = not any(self.stack) and module.startswith(__name__ + ".")
            name = f"{module.rsplit('.', 1)[-1]}.{func.__name__}" if outer else ""
            self.stack.append((name, time.perf_counter()) if outer else None)
            if outer:
                start(name)

        def on_end(self, ev: event.Event) -> None:
            top = self.stack.pop() if self.stack else None
            if top is not None and end is not None:
                end(top[0], time.perf_counter() - top[1])

    listener = _Listener()
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)


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


def product_options(*, parallel: bool = False, inline: bool = False) -> dict[str, object]:
    """``numba.njit`` options of the product kernels (block formats and lattice codes).

    No fastmath (the numpy reference's bits), no bounds checks and numpy's error model (the
    drivers check every size before a kernel runs), the on-disk cache when writable; with
    ``parallel`` a ``prange`` kernel without the GIL, with ``inline`` a helper inlined into its
    caller.
    """
    opts: dict[str, object] = {
        "cache": numba_cache(),
        "fastmath": False,
        "boundscheck": False,
        "error_model": "numpy",
    }
    if parallel:
        opts.update(parallel=True, nogil=True)
    if inline:
        opts["inline"] = "always"
    return opts
