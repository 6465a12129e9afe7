"""The stages of `scripts/gpu_checks.sh`, one per call: python scripts/gpu_checks.py STAGE --out DIR [--dry-run]

Every stage writes its results as JSON lines, one row per check, appended and flushed as soon as the row is
known (`OUT/<stage>.jsonl`), so that a timeout, a crash, SIGTERM or SIGKILL keeps every finished row; a row
that fails is written with its error and the stage goes on. `--dry-run` runs the same stages on the CPU with
tiny sizes: rows that need CUDA (Triton, the compiled paths) are written as "skipped: no GPU", and
`--inject-failure` adds one row that raises, to show that a failure is recorded and the stage goes on.

Stages: preflight (versions, the installs the other stages import, the commit, free memory), smoke (one
training step of every task's model on the device), bench (the norms at the tasks' shapes and the recurrent
shapes, forward+backward, interleaved over --rounds), bench-tasks (whole training steps of every task, fused
norms, interleaved over --rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402

# the tasks' row-norm shapes (rows x d) at the paper's widths, and the demo-sized ones for a dry run
SHAPES = {"translation": (4000, 1024), "transformer": (8192, 512), "reading": (19200, 256),
          "retrieval": (16384, 1024), "recurrent step": (80, 1024)}
DRY_SHAPES = {"tiny rows": (64, 32), "tiny step": (8, 48)}


class Rows:
    """A JSON-lines file written one flushed row at a time."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", buffering=1)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps({"time": round(time.time(), 3), **row}, default=str) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())


def run_row(rows: Rows, name: str, fn) -> None:
    """One check: its result, or its error (one line), as a row; never raises."""
    start = time.perf_counter()
    try:
        result = fn()
        extra = result if isinstance(result, dict) else {}  # a check's own figures, if it returns any
        rows.write({"row": name, "status": "ok", "seconds": round(time.perf_counter() - start, 3), **extra})
    except Exception as exc:  # noqa: BLE001  (a failing row is a result, and the stage goes on)
        rows.write({"row": name, "status": "failed", "seconds": round(time.perf_counter() - start, 3),
                    "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                    "where": traceback.format_exc().strip().splitlines()[-3:]})


def skipped(rows: Rows, name: str, why: str) -> None:
    rows.write({"row": name, "status": f"skipped: {why}"})


def preflight(rows: Rows, device: torch.device, dry: bool) -> None:
    from experiments.core.provenance import stamp

    run_row(rows, "stamp", lambda: {"stamp": stamp()})
    run_row(rows, "versions", lambda: {"torch": torch.__version__, "cuda": torch.version.cuda,
                                       "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"})
    for module in ("hydra", "omegaconf", "sacrebleu", "sentencepiece", "triton"):
        def check(module=module):
            imported = __import__(module)
            return {"version": getattr(imported, "__version__", "?")}
        if module == "triton" and dry:
            skipped(rows, f"import {module}", "no GPU")
            continue
        run_row(rows, f"import {module}", check)
    if device.type == "cuda":
        run_row(rows, "nvidia-smi", lambda: {"out": subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,memory.free,driver_version", "--format=csv"],
            capture_output=True, text=True, timeout=15).stdout.strip()})
        run_row(rows, "free memory", lambda: dict(zip(("free_bytes", "total_bytes"), torch.cuda.mem_get_info(),
                                                     strict=True)))
    else:
        skipped(rows, "nvidia-smi", "no GPU")


def _task(name: str, device: torch.device):
    from bench_tasks import timing_task

    return timing_task(name, "rmsnorm", device)


def smoke(rows: Rows, device: torch.device, dry: bool) -> None:
    from tasks import task_names

    scale = 0.01 if dry else 0.1
    for name in task_names():
        def step(name=name):
            task = _task(name, device)
            batch = task.synthetic_batch(scale, torch.Generator().manual_seed(0))
            loss = task.train_step(batch)
            return {"loss": float(loss), "batch": task.describe_batch(scale)}
        run_row(rows, f"train step: {name}", step)


def bench(rows: Rows, device: torch.device, dry: bool, rounds: int, dtype: torch.dtype, inject: bool) -> None:
    for label, (n, d) in (DRY_SHAPES if dry else SHAPES).items():
        _bench_shape(rows, f"{label} {n}x{d}", n, d, device, dtype, rounds, dry, inject)


def _bench_shape(rows: Rows, name: str, n: int, d: int, device: torch.device, dtype: torch.dtype, rounds: int,
                 dry: bool, inject: bool) -> None:
    """One shape: each implementation's first forward+backward as a row, then all of them timed interleaved."""
    import torch.nn.functional as F

    from rmsnorm import functional as RF
    from rmsnorm.interleaved import describe, speedup, speedup_interval, time_interleaved

    x = torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)
    w = torch.ones(d, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(d, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(n, d, device=device, dtype=dtype)
    candidates = {
        "layernorm (torch)": lambda: F.layer_norm(x, (d,), w, b, 1e-8),
        "rms_norm (torch)": lambda: F.rms_norm(x, (d,), w, 1e-8),
        "rmsnorm (ours)": lambda: RF.rms_norm(x, w, None, 1e-8),
        "prmsnorm (ours, p=1/16)": lambda: RF.rms_norm(x, w, None, 1e-8, k=max(1, d // 16)),
    }

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (x, w), dy, allow_unused=True)

    steps = {}
    for impl, fn in candidates.items():
        run_row(rows, f"{name}: {impl} runs", fwd_bwd(fn))
        steps[impl] = fwd_bwd(fn)
    if dry:
        skipped(rows, f"{name}: torch.compile", "no GPU")
    else:
        def compiled_check():
            fn = torch.compile(lambda x, w: F.rms_norm(x, (d,), w, 1e-8), dynamic=False)
            torch.autograd.grad(fn(x, w), (x, w), dy)
            steps["rms_norm (torch, compiled)"] = lambda: torch.autograd.grad(fn(x, w), (x, w), dy)
        run_row(rows, f"{name}: torch.compile runs", compiled_check)
    if inject:
        run_row(rows, f"{name}: injected failure", lambda: 1 / 0)

    def timing():
        times = time_interleaved(steps, device, rounds, 3, 2)
        ref = times.per_round["layernorm (torch)"]
        return {"ms_per_fwd_bwd": {k: 1e3 * times.median(k) for k in steps},
                "vs_layernorm": {k: describe(speedup(ref, v), speedup_interval(ref, v))
                                 for k, v in times.per_round.items() if k != "layernorm (torch)"}}
    run_row(rows, f"{name}: timed, {rounds} rounds", timing)


def bench_tasks(rows: Rows, device: torch.device, dry: bool, rounds: int) -> None:
    from bench_tasks import CPU_SCALE, bench_task
    from tasks import task_names

    for name in task_names():
        scale = (0.01 if dry else CPU_SCALE.get(name, 0.5)) if device.type == "cpu" else 1.0
        run_row(rows, f"steps: {name}", lambda name=name, scale=scale: bench_task(
            name, device, scale, rounds, 1, 1, ["layernorm", "rmsnorm", "none"], [], impls=("fused",),
            profile_steps=1))  # one profiled step a norm: the attributed share, inside the stage's time limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["preflight", "smoke", "bench", "bench-tasks"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes: CUDA-only rows are skipped")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--inject-failure", action="store_true", help="add one failing row (a dry run's check)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (an interval needs two)")
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("gpu_checks.py: no CUDA device; use --dry-run on a machine without one", file=sys.stderr)
        return 2
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows = Rows(args.out / f"{args.stage}.jsonl")
    rows.write({"row": "stage start", "status": "ok", "stage": args.stage, "device": str(device),
                "dry_run": args.dry_run, "rounds": args.rounds})
    if args.stage == "preflight":
        preflight(rows, device, args.dry_run)
    elif args.stage == "smoke":
        smoke(rows, device, args.dry_run)
    elif args.stage == "bench":
        dtype = torch.float32 if args.dry_run else getattr(torch, args.dtype)
        bench(rows, device, args.dry_run, args.rounds, dtype, args.inject_failure)
    else:
        bench_tasks(rows, device, args.dry_run, args.rounds)
    rows.write({"row": "stage end", "status": "ok", "stage": args.stage})
    return 0


if __name__ == "__main__":
    sys.exit(main())
