"""The papers' experiments, each a function returning an :class:`ExperimentResult`.

``mmquant reproduce NAME`` runs one, prints its table, and writes ``NAME.json`` and ``NAME.png``.
Experiments register themselves with :func:`experiment`; modules listed in
:data:`EXPERIMENT_MODULES` are imported on first use.
"""

from mmquant.experiments.base import (
    EXPERIMENT_MODULES,
    ExperimentResult,
    experiment,
    experiments,
    run_experiment,
)

__all__ = ["EXPERIMENT_MODULES", "ExperimentResult", "experiment", "experiments", "run_experiment"]
