"""Audit of a synthetic multi-GB checkpoint: peak memory, parameters per second, serial vs Dask.

Writes a Hugging Face sharded bfloat16 checkpoint of ``--gb`` GB (``--shards`` shards + index,
``rows × cols`` linear weights, written one tensor at a time) into a temporary folder, then runs
``mmquant.checkpoints.audit`` with ``--spec`` in a fresh subprocess and reports

* the peak resident set of that process (``ru_maxrss``) against the resident set before the audit
  (after imports and a warm-up encode), and against the largest tensor and the whole checkpoint:
  tensors are memory-mapped and read one at a time, so the increase is a small multiple of the
  largest tensor (its float32 and float64 working copies), not the size of the model;
* parameters audited per second;
* the same audit of the first ``--dask-gb`` GB of tensors serially and on a local Dask cluster of
  ``--workers`` processes (timings on a shared machine are noisy: rerun on an idle one).

    python benchmarks/bench_checkpoint.py [--gb 2] [--rows 4096] [--cols 4096] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

CHILD = r"""
import json, resource, sys, time
import numpy as np
from mmquant.checkpoints import Runner, audit, open_checkpoint, select_tensors
import mmquant
path, spec, limit, workers = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
mmquant.get(spec).encode(np.ones((4, 256), np.float32))  # warm-up: compilation, tables
ck = open_checkpoint(path)
names, total = [], 0
for n in select_tensors(ck):
    if total >= limit * 1e9:
        break
    names.append(n)
    total += ck.tensors[n].size * 2
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
runner = Runner(workers=workers) if workers else None
t0 = time.perf_counter()
res = audit(path, names, [spec], runner=runner)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(ck.tensors[n].size for n in names)
print(json.dumps({"seconds": dt, "params": params, "before": before, "peak": peak,
                  "tensors": len(names), "rows": len(res.rows)}))
"""


def write_checkpoint(folder: Path, gb: float, rows: int, cols: int, shards: int) -> int:
    """Write the synthetic sharded bf16 checkpoint; returns its size in bytes."""
    import ml_dtypes

    from mmquant.checkpoints.safetensors_file import write_safetensors

    per = rows * cols * 2
    count = max(shards, int(gb * 1e9 // per))
    rng = np.random.default_rng(0)
    names = [f"model.layers.{i}.mlp.proj.weight" for i in range(count)]
    files = [f"model-{k + 1:05d}-of-{shards:05d}.safetensors" for k in range(shards)]
    wmap = {}
    for k, f in enumerate(files):
        mine = names[k::shards]

        def make(i: int) -> np.ndarray:
            scale = 0.02 * (1 + (i % 7) / 7)
            return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(
                ml_dtypes.bfloat16
            )

        items = [(n, "BF16", (rows, cols), lambda i=names.index(n): make(i)) for n in mine]
        write_safetensors(folder / f, items, metadata={"format": "pt"})
        wmap.update(dict.fromkeys(mine, f))
    index = {"metadata": {"total_size": count * per}, "weight_map": wmap}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return count * per


def run_child(path: Path, spec: str, limit_gb: float, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), spec, str(limit_gb), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="checkpoint size in GB (bf16)")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--spec", default="int:bits=4")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dask-gb", type=float, default=0.5, help="GB of tensors for serial vs Dask")
    ap.add_argument(
        "--dir", default=None, help="where to write the checkpoint (default: a temp dir)"
    )
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="mmquant-bench-", dir=args.dir))
    try:
        free = shutil.disk_usage(base).free
        if free < 2 * args.gb * 1e9:
            raise SystemExit(f"only {free / 1e9:.1f} GB free in {base}: lower --gb")
        t0 = time.perf_counter()
        size = write_checkpoint(base, args.gb, args.rows, args.cols, args.shards)
        print(f"# {machine()}")
        print(
            f"wrote {size / 1e9:.2f} GB ({args.shards} bf16 shards) in {time.perf_counter() - t0:.1f} s"
        )
        r = run_child(base, args.spec, args.gb, 0)
        largest = args.rows * args.cols
        grown = r["peak"] - r["before"]
        print(
            f"audit {args.spec}: {r['tensors']} tensors, {r['params'] / 1e9:.2f} G params in "
            f"{r['seconds']:.1f} s = {r['params'] / r['seconds'] / 1e6:.1f} M params/s"
        )
        print(
            f"peak RSS {r['peak'] / 2**20:.0f} MiB (before the audit {r['before'] / 2**20:.0f} MiB): "
            f"+{grown / 2**20:.0f} MiB = {grown / (largest * 2):.1f}× the largest tensor (bf16), "
            f"{grown / size:.3f}× the checkpoint"
        )
        s = run_child(base, args.spec, args.dask_gb, 0)
        d = run_child(base, args.spec, args.dask_gb, args.workers)
        print(
            f"first {s['params'] / 1e6:.0f} M params: serial {s['seconds']:.1f} s, Dask "
            f"{args.workers} local workers {d['seconds']:.1f} s (cluster start-up included; "
            "noisy on a shared machine)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
