"""Running per-tensor tasks in this process or on a ``dask.distributed`` cluster.

A task is a module-level function and small arguments (the checkpoint's path, a tensor name,
spec strings, the calibration file's path): a worker opens the checkpoint and reads its tensor
itself, so no tensor passes through the client; only the (small) results come back. Each task is
a pure function of its arguments, so the results of a cluster run are bit-identical to the serial
run's, and come back in the order of the tasks.

Dask is optional (``pip install 'mmquant[dask]'``): it is imported only when ``workers`` or
``scheduler`` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Runner", "run_tasks", "INSTALL_DASK"]

INSTALL_DASK = "pip install 'mmquant[dask]'  (or: pip install 'dask[distributed]')"


@dataclass(frozen=True)
class Runner:
    """Where tasks run.

    Attributes
    ----------
    workers : int or None
        Start a local ``dask.distributed`` cluster of this many worker processes (one thread
        each); ``None`` (and no ``scheduler``) runs serially in this process.
    scheduler : str or None
        Address of an existing cluster's scheduler (``tcp://host:8786``); overrides ``workers``.
    processes : bool
        Local cluster only: worker processes (default) or threads of this process (tests).
    """

    workers: int | None = None
    scheduler: str | None = None
    processes: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise ValueError("scheduler address is empty")

    @property
    def distributed(self) -> bool:
        """Whether tasks go to a Dask cluster."""
        return self.workers is not None or self.scheduler is not None

    def describe(self) -> str:
        """``"serial"``, ``"dask: 4 local workers"`` or ``"dask: tcp://..."``."""
        if self.scheduler is not None:
            return f"dask: {self.scheduler}"
        if self.workers is not None:
            return f"dask: {self.workers} local worker{'s' if self.workers > 1 else ''}"
        return "serial"


def _client(runner: Runner):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(
            f"--workers / --scheduler need Dask; install it with: {INSTALL_DASK}"
        ) from None
    if runner.scheduler is not None:
        return Client(runner.scheduler), None
    cluster = LocalCluster(
        n_workers=runner.workers,
        threads_per_worker=1,
        processes=runner.processes,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def run_tasks(
    func: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    runner: Runner | None = None,
    progress: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[func(*t) for t in tasks]``, serially or on a Dask cluster; results in task order.

    Parameters
    ----------
    func : callable
        A module-level function (picklable by reference).
    tasks : sequence of tuple
        Arguments of each call.
    runner : Runner, optional
        Where to run (default: serially).
    progress : callable, optional
        ``progress(i, result)`` after each task finishes (in completion order on a cluster).

    Raises
    ------
    Exception
        The first task's exception, as raised by ``func`` (re-raised on the client).
    """
    runner = runner or Runner()
    if not runner.distributed:
        out = []
        for i, t in enumerate(tasks):
            out.append(func(*t))
            if progress is not None:
                progress(i, out[-1])
        return out
    client, cluster = _client(runner)
    try:
        from dask.distributed import as_completed

        futures = [client.submit(func, *t, pure=False) for t in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for fut in as_completed(futures):
            i = index[fut.key]
            results[i] = fut.result()  # re-raises the task's exception
            if progress is not None:
                progress(i, results[i])
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
