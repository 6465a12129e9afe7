"""The memory one training step of each task's paper model takes: python scripts/step_memory.py [--tasks ...]

For `docs/replicate.md`'s estimate of what a GPU needs: each task's model at `preset=paper` widths with
LayerNorm, on a synthetic batch of the paper's size (`Task.synthetic_batch(1.0)`, as `make bench-tasks --scale 1`
builds it), one training step (forward, backward, update) on the CPU in float32, its peak measured by the
profiler's memory events above what was allocated before the step (`rmsnorm.measure.peak_bytes`), plus the
model's parameters and optimiser state, which live through the whole run. On a GPU add the CUDA context and the
caching allocator's slack; mixed precision needs less. The Transformer is measured on a tenth of its batch and
scaled (`SCALE`). Writes results/replicate/step-memory.json, task by task (a rerun keeps the others).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402
from bench_tasks import timing_task  # noqa: E402

from experiments.core.atomic import save_json  # noqa: E402
from experiments.core.machine import machine_name  # noqa: E402
from experiments.core.provenance import stamp  # noqa: E402
from rmsnorm.measure import peak_bytes  # noqa: E402

# the Transformer's paper batch (25k tokens a side) does not fit a 24 GB CPU run with the profiler: measured on a
# tenth of it and scaled up linearly (activations grow with the tokens; weights and Adam's state do not)
SCALE = {"transformer": 0.1}


def step_memory(task_name: str) -> dict:
    task = timing_task(task_name, "layernorm", torch.device("cpu"))
    scale = SCALE.get(task_name, 1.0)
    batch = task.synthetic_batch(scale, torch.Generator().manual_seed(0))
    task.train_step(batch)  # the optimiser's state exists from the first step on
    params = sum(p.numel() * p.element_size() for p in task.model.parameters())
    state = sum(t.numel() * t.element_size() for s in task.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    start = time.perf_counter()
    peak = peak_bytes(lambda: task.train_step(batch), torch.device("cpu"))
    return {"task": task_name, "batch": task.describe_batch(1.0), "measured_at_scale": scale,
            "parameters_bytes": params, "optimizer_state_bytes": state,
            "step_peak_bytes": None if peak is None else int(peak / scale),
            "step_seconds_cpu": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="cifar10,reading,retrieval,transformer,translation")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "replicate" / "step-memory.json")
    args = parser.parse_args(argv)
    # one task at a time, each written as it finishes (a task that runs out of memory keeps the others)
    old = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    rows = {r["task"]: r for r in old}
    for name in args.tasks.split(","):
        rows[name] = step_memory(name)
        print(rows[name], flush=True)
        save_json({"command": "python scripts/step_memory.py [--tasks ...]", "produced_by": stamp(),
                   "machine": machine_name(torch.device("cpu")), "dtype": "float32",
                   "results": sorted(rows.values(), key=lambda r: r["task"])}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
