"""Any checkpoint as input: lazy readers, audit against the limits, bit allocation, export, Dask.

::

    from mmquant.checkpoints import open_checkpoint, select_tensors, audit, allocate
    ck = open_checkpoint("path/to/model")               # .safetensors, HF folder, .npy, .npz
    names = select_tensors(ck, exclude=["pooler.*"])     # the linear weights
    res = audit(ck.path, names, ["nvfp4", "e8ec"])       # tensor × quantizer, gaps to the limits
    plan = allocate(res, budget=4.25)                    # exact: least error at ≤ 4.25 bits/param
    quantize_checkpoint(ck.path, "out/", plan.specs, dequantized=True)

Modules: :mod:`~.safetensors_file` (checked headers, memory-mapped tensors, streaming writer),
:mod:`~.reader` (checkpoint layouts, tensor selection), :mod:`~.audit`, :mod:`~.allocate`,
:mod:`~.export` (``.mmq`` per shard, passthrough, dequantized checkpoint), :mod:`~.runner`
(serial or ``dask.distributed``).
"""

from mmquant.checkpoints.allocate import Allocation, allocate, solve_mckp
from mmquant.checkpoints.audit import (
    DEFAULT_CANDIDATES,
    AuditResult,
    AuditRow,
    audit,
    audit_tensor,
    plot_heatmap,
)
from mmquant.checkpoints.export import (
    MANIFEST_NAME,
    ExportResult,
    dequantize_folder,
    quantize_checkpoint,
    read_manifest,
)
from mmquant.checkpoints.reader import (
    Checkpoint,
    TensorInfo,
    is_linear_weight,
    open_checkpoint,
    read_covariance,
    select_tensors,
)
from mmquant.checkpoints.runner import Runner, run_tasks

__all__ = [
    "DEFAULT_CANDIDATES",
    "MANIFEST_NAME",
    "Allocation",
    "AuditResult",
    "AuditRow",
    "Checkpoint",
    "ExportResult",
    "Runner",
    "TensorInfo",
    "allocate",
    "audit",
    "audit_tensor",
    "dequantize_folder",
    "is_linear_weight",
    "open_checkpoint",
    "plot_heatmap",
    "quantize_checkpoint",
    "read_covariance",
    "read_manifest",
    "run_tasks",
    "select_tensors",
    "solve_mckp",
]
