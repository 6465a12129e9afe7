"""Whole training steps of each task's paper model, every norm interleaved: python scripts/bench_tasks.py

For each task, the `preset=paper` model and optimiser are built once per norm; each timed step is the task's
own `train_step` (forward, loss, backward, optimiser) on a fixed synthetic batch of the paper's shape. The
norms run round-robin in a fresh random order each round, after warm-up, CUDA synchronised, so drift on a
shared machine hits every norm alike. Reported: the median seconds per step in the paper's unit, and the
speed-up over LayerNorm, (T_LN - T_norm) / T_LN, from the geometric mean over rounds of each round's paired
time ratio, with a 95% t interval; an interval that spans 0 reads "within noise".

`--scale` shrinks the batch (and, for the RNN translation, the sentence length), never a hidden width: the
norm's share of a step depends on the width. The default on a CPU is 0.5 (the Transformer 0.01, CPU_SCALE: 8 of
its 833 sentences of 30 tokens), so the whole run fits in minutes on 2 cores.
Writes results/bench-tasks/<device>.md and .json.
"""

from __future__ import annotations

from experiments.core.training import malloc

if __name__ == "__main__":
    # before torch and Hydra load: the re-execution with steady malloc settings then costs no second import
    malloc.reexec_with_stable_malloc()

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from experiments.core.machine import machine_name
from experiments.core.provenance import describe as describe_stamp
from experiments.core.provenance import stamp
from experiments.core.reporting.report import read_paper_table, variant
from experiments.core.training.config import compose_config, norm_spec, typed_task_config
from rmsnorm.interleaved import describe, speedup, speedup_interval, time_interleaved
from rmsnorm.kernels import dispatch
from rmsnorm.profile_share import profiled_norm_share
from rmsnorm.registry import REFERENCE_NORM

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(p.stem for p in (REPO / "configs" / "task").glob("*.yaml"))  # every task the configs declare
# the CPU default's scale where 0.5 would not fit the 15-minute budget: Transformer base at half its 25k-token
# batch takes 17 s a step on 2 cores (the 32k-word output layer dominates); its scale shrinks the number of
# sentences only (30 tokens each); widths stay the paper's
CPU_SCALE = {"transformer": 0.01}
# --jobs: the tasks' order into the lanes, the longest timing first (the demo's, 2-core AMD EPYC, 2026-12-01)
LANE_ORDER = ["translation", "reading", "cifar10", "transformer", "retrieval"]


def task_config(task: str, norm: str, overrides: list[str], preset: str = "paper"):
    return compose_config([f"task={task}", f"norm={norm}", f"preset={preset}", *overrides])


def timing_task(task_name: str, norm: str, device: torch.device, overrides: list[str] = (), preset: str = "paper"):
    """The task's model and optimiser for timing on synthetic batches (no data), seeded."""
    cfg = task_config(task_name, norm, list(overrides), preset)
    torch.manual_seed(0)
    task_class = hydra.utils.instantiate(cfg.task.builder).func
    return task_class.for_timing(typed_task_config(task_class.Config, cfg.task), norm_spec(cfg), device, seed=0)


def paper_times(task: str) -> dict[str, str]:
    """norm -> the paper's time for this task, as the report reads it (results/paper/<task>.csv)."""
    return {norm: f"{r['time']} +- {r['time_std']}" for norm, r in read_paper_table(REPO / "results" / "paper",
                                                                                      task).items()}


def pipeline_rate(task_name: str, batch_size: int, data_dir: Path, data_preset: str = "demo",
                  seconds: float = 1.0) -> dict:
    """Batches per second of the task's own batch building (`Task.batches`, on the CPU, in this process) on
    its demo data at the timed batch size: what one loader worker, or the training process, can feed. Whole
    epochs for at least `seconds` (on the demo sets 350-5600 batches a second: one second is hundreds of them)."""
    from experiments.core.errors import UserError
    from experiments.core.training.run import build_task

    cfg = task_config(task_name, REFERENCE_NORM, [f"data_dir={data_dir}", f"task.batch_size={batch_size}",
                                               "logger=none"], data_preset)
    try:
        task = build_task(cfg, torch.device("cpu"))
    except UserError as exc:
        return {"batches_per_sec": None, "note": f"not measured: {str(exc).splitlines()[0][:160]}"}
    count, start = 0, time.perf_counter()
    for epoch in range(1000):
        for _ in task.batches(epoch, 0):
            count += 1
        if time.perf_counter() - start > seconds:
            break
    rate = count / (time.perf_counter() - start)
    return {"batches_per_sec": rate, "note": f"{data_preset} data, batch {batch_size}, {count} batches"}


def variant_key(norm: str, impl: str) -> str:
    """A timed variant's name: the norm, with '/<impl>' unless it is the fused default."""
    return norm if impl == "fused" else f"{norm}/{impl}"


def has_impls(norm: str) -> bool:
    """Whether the norm's implementation can be chosen (the RMS family, LayerNorm); batch and weight norm are
    torch's own, the baseline has none."""
    from rmsnorm import NormSpec
    from rmsnorm.norms import AffineNorm

    return isinstance(NormSpec(norm).build(64), AffineNorm)


def bench_task(task_name: str, device: torch.device, scale: float, rounds: int, steps: int, warmup: int,
               norms: list[str] | None, overrides: list[str], preset: str = "paper",
               data_dir: Path | None = None, data_preset: str = "demo", impls: tuple[str, ...] = ("fused",),
               profile_steps: int = 3) -> dict:
    first = task_config(task_name, REFERENCE_NORM, overrides, preset)
    base = norms or list(first.task.norms)
    variants = [(n, "fused") for n in base] + [(n, i) for i in impls if i != "fused" for n in base if has_impls(n)]
    names = [variant_key(n, i) for n, i in variants]
    tasks, batch_text, unit = {}, "", None
    for (name, impl), key in zip(variants, names, strict=True):
        task = timing_task(task_name, name, device, [*overrides, f"norm.impl={impl}"], preset)
        batch = task.synthetic_batch(scale, torch.Generator().manual_seed(0))
        tasks[key] = (task, batch)
        batch_text = task.describe_batch(scale)
    unit = next(iter(tasks.values()))[0].paper_time_unit(scale) or ("sec_per_1k_steps", 1000)
    print(f"{task_name}: {', '.join(names)} on {batch_text}; {rounds} rounds x {steps} steps", flush=True)
    times = time_interleaved({n: (lambda t=t, b=b: t.train_step(b)) for n, (t, b) in tasks.items()}, device,
                             rounds, steps, warmup, on_round=lambda r: print(f"  round {r + 1}/{rounds}", flush=True))
    rows = []
    for (_, impl), name in zip(variants, names, strict=True):
        per_step = times.median(name)
        row = {"norm": name, "impl": impl, "sec_per_step": per_step, unit[0]: per_step * unit[1],
               "rounds": times.per_round[name]}
        if profile_steps and name != "none":  # the share again, attributed by the profiler (after the timing)
            task, batch = tasks[name]
            prof = profiled_norm_share(task.model, lambda t=task, b=batch: t.train_step(b), steps=profile_steps,
                                       warmup=1)
            row["norm_share_profiled"] = prof.share
            row["norm_modules_seen"] = [prof.modules_seen, prof.modules_total]
        # the speed-up against LayerNorm computed the same way (composite against composite: the paper's setting)
        reference = variant_key(REFERENCE_NORM, impl)
        if reference in names and name != reference:
            ref = times.per_round[reference]
            row["speedup_vs_layernorm"] = speedup(ref, times.per_round[name])
            row["speedup_interval95"] = speedup_interval(ref, times.per_round[name])
        if "none" in names and name != "none":  # the norm's share of a step: (T - T_none) / T, paired by round
            row["norm_share"] = speedup(times.per_round[name], times.per_round["none"])
            row["norm_share_interval95"] = speedup_interval(times.per_round[name], times.per_round["none"])
        rows.append(row)
    batch_size = max(1, round(first.task.batch_size * scale))
    pipeline = pipeline_rate(task_name, batch_size, data_dir, data_preset) if data_dir is not None else None
    # a variant the report tables apart (the Transformer's pre-norm), read from the config as the report does
    kind = variant({"config": {"task": OmegaConf.to_container(first.task)}})
    return {"task": task_name, "variant": kind, "preset": preset, "batch": batch_text, "unit": unit[0],
            "unit_steps": unit[1],
            "rows": rows, "rounds": rounds, "steps_per_round": steps, "warmup_steps": warmup, "pipeline": pipeline}


def _lane_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _bench_in_lane(*call) -> tuple[dict, dict]:
    """bench_task in a lane, with the kernel paths that lane's norms took (the parent runs none)."""
    return bench_task(*call), dispatch.describe()


def in_lanes(calls: list[tuple], jobs: int, threads: int | None) -> tuple[list[dict], dict]:
    """bench_task for each call in `jobs` processes (spawned: torch's thread pool is not forked), the results in
    the calls' order, and the kernel paths the lanes took. The tasks with most steps to time go first, so the
    lanes end together."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    order = sorted(range(len(calls)), key=lambda i: (LANE_ORDER.index(calls[i][0]) if calls[i][0] in LANE_ORDER
                                                     else len(LANE_ORDER), len(calls[i][7])))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_lane_threads,
                             initargs=(threads,)) as pool:
        futures = {i: pool.submit(_bench_in_lane, *calls[i]) for i in order}
        done = [futures[i].result() for i in range(len(calls))]
    kernels = {"cpu": sorted({k["cpu"] for _, k in done} - {"not used"}) or "not used",
               "cuda": {c: p for _, k in done for c, p in k["cuda"].items()}}
    if isinstance(kernels["cpu"], list) and len(kernels["cpu"]) == 1:
        kernels["cpu"] = kernels["cpu"][0]
    return [r for r, _ in done], kernels


def profiled_text(row: dict) -> str:
    """The profiler-attributed share as a cell, saying when some norm modules ran inside another op."""
    share = row.get("norm_share_profiled")
    seen, total = row.get("norm_modules_seen", (0, 0))
    if share is None:
        return f"not attributed: its {total} norm modules run inside another op" if total else "-"
    return f"{100 * share:.1f}%" + ("" if seen == total else f" ({seen} of {total} norm modules seen)")


def render(results: list[dict], machine: str, command: str, scale: float, preset: str = "paper",
           other_scales: dict[str, float] | None = None, produced_by: dict | None = None,
           kernels: dict | None = None, lanes: int = 1) -> str:
    others = "".join(f", {t} {s:g}" for t, s in (other_scales or {}).items())
    side_by_side = (f" The tasks were timed in {lanes} processes side by side (a task's norms all in one), as "
                    "`make demo` trains its runs: each norm under the same load from the other lanes."
                    if lanes > 1 else "")
    lines = [f"# Task step timing: {machine}", "", f"Command: `{command}`  ",
             *([f"Produced by: {describe_stamp(produced_by)}  "] if produced_by else []),
             f"Date: {datetime.date.today()}, torch {torch.__version__}, preset {preset}, scale {scale:g}{others}  ",
             "Each norm's " + ("paper-width" if preset == "paper" else f"preset={preset}")
             + " model runs whole training steps (forward, loss, backward, optimiser) on a "
             "fixed synthetic batch; norms interleaved round-robin in a shuffled order, after warm-up, CUDA "
             "synchronised. Time: median over rounds, in the paper's unit at this batch. Speed-up vs LayerNorm: "
             "(T_LN - T) / T_LN, T / T_LN the geometric mean of each round's ratio [95% t interval over rounds]; "
             "'within noise' where the "
             "interval spans 0. The norm's share of the step: (T - T_none) / T, the same way; beside it the share "
             "the profiler attributes to the norm modules' forward and backward ops over a few profiled steps "
             "(`rmsnorm.profile_share`: the no-norm model can differ in more than its norms; the profiler's per-op "
             "overhead inflates norms made of many small ops). The paper's column "
             "is its own GPU (Table 2: TITAN X, Table 10: RTX 2080 Ti). `<norm>/composite` is the norm as the chain "
             "of tensor ops the paper's frameworks ran (`norm.impl=composite`), its speed-up against LayerNorm "
             "computed the same way; the plain name is the fused kernels." + side_by_side, ""]
    for res in results:
        paper = paper_times(res["task"])
        title = res["task"] + (f" ({res['variant']})" if res.get("variant") else "")
        lines += [f"## {title}: {res['batch']}, {res['rounds']} rounds x {res['steps_per_round']} steps", "",
                  f"| norm | ms / step | {res['unit']} | speed-up vs LayerNorm [95% CI] | norm's share of the step "
                  f"[95% CI] | norm's share, profiler-attributed | paper {res['unit']} |",
                  "|---|---|---|---|---|---|---|"]
        for row in res["rows"]:
            sp = describe(row["speedup_vs_layernorm"], row["speedup_interval95"]) if "speedup_interval95" in row \
                else ("reference" if row["norm"].split("/")[0] == REFERENCE_NORM else "")
            share = describe(row["norm_share"], row["norm_share_interval95"]) if "norm_share" in row else "-"
            lines.append(f"| {row['norm']} | {1e3 * row['sec_per_step']:.2f} | {row[res['unit']]:.3g} | {sp} | "
                         f"{share} | {profiled_text(row)} | {paper.get(row['norm'].split('/')[0], '-')} |")
        lines.append("")
        pipe = res.get("pipeline")
        if pipe:
            fastest = 1.0 / min(row["sec_per_step"] for row in res["rows"])
            if pipe["batches_per_sec"] is None:
                lines += [f"Data pipeline: {pipe['note']}.", ""]
            else:
                verdict = ("keeps ahead of the fastest step" if pipe["batches_per_sec"] > fastest else
                           "slower than the fastest step: set task.loader_workers=1 so a worker builds them beside it")
                lines += [f"Data pipeline: {pipe['batches_per_sec']:.0f} batches/s built by `Task.batches` on the CPU "
                          f"({pipe['note']}) against {fastest:.1f} steps/s for the fastest norm here: {verdict}.", ""]
    if kernels and kernels.get("cuda"):
        lines += ["The CUDA dispatch's choices in this run (norm/dtype/width/rows -> path):", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(kernels["cuda"].items())] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma list; task:override[:override] times the task again with its own overrides "
                             "(transformer:task.model.norm_position=pre)")
    parser.add_argument("--norms", default=None, help="comma list (default: every norm of the task's config)")
    parser.add_argument("--scale", type=float, default=None, help="batch/length factor (default 1 on CUDA, 0.5 on CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="default 10 on CUDA, 7 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default 5 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--preset", default="paper",
                        help="the models' preset (make demo times its own models with --preset demo --scale 1)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench-tasks")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data",
                        help="where `make demo-data` wrote the demo data sets: the data pipeline is timed on them")
    parser.add_argument("--data-preset", default="demo", help="whose data sets under --data-dir (demo, smoke)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip timing the data pipeline")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps profiled per norm for the profiler-attributed share, after the timing (0: none; "
                             "`make demo` skips it: its speed-ups need only the timing)")
    parser.add_argument("--impls", default="fused,composite",
                        help="norm implementations timed side by side (fused, composite, torch): the norms as fused "
                             "kernels and as the tensor ops the paper's frameworks ran")
    parser.add_argument("--stem", help="file name without suffix (default: device, machine and preset)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="CPU: tasks timed side by side in this many processes (each task's norms interleaved "
                             "within one), as `make demo` trains them: --jobs 2 --threads 1 on 2 cores")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides applied to every task, e.g. task.model.hidden=256")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    cuda = device.type == "cuda"
    if args.jobs > 1 and cuda:
        raise SystemExit("--jobs is for the CPU: on a GPU the tasks would share the device they are timed on")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the lanes' torch, read when it loads
        torch.set_num_threads(args.threads)
    scale = args.scale if args.scale is not None else (1.0 if cuda else 0.5)
    rounds = args.rounds or (10 if cuda else 7)
    steps = args.steps or (5 if cuda else 2)
    machine = machine_name(device)
    # a task may carry overrides of its own: transformer:task.model.norm_position=pre is a second Transformer
    entries = [entry.split(":") for entry in args.tasks.split(",")]
    unknown = sorted({t for t, *_ in entries} - set(TASKS))
    if unknown:
        raise SystemExit(f"--tasks: no task {', '.join(unknown)} in configs/task/ (there: {', '.join(TASKS)})")
    scales = {t: scale if args.scale is not None or cuda or args.preset != "paper" else CPU_SCALE.get(t, scale)
              for t, *_ in entries}
    calls = [(t, device, scales[t], rounds, steps, args.warmup, args.norms.split(",") if args.norms else None,
              [*args.overrides, *own], args.preset, None if args.no_pipeline else args.data_dir, args.data_preset,
              tuple(args.impls.split(",")), args.profile_steps) for t, *own in entries]
    if args.jobs > 1:
        results, kernels = in_lanes(calls, args.jobs, args.threads)
    else:
        results = [bench_task(*c) for c in calls]
        kernels = dispatch.describe()
    given = argv if argv is not None else sys.argv[1:]
    command = ("python scripts/bench_tasks.py " + " ".join(shlex.quote(a) for a in given)).strip()
    produced = stamp(machine)
    text = render(results, machine, command, scale, args.preset,
                  {t: s for t, s in scales.items() if s != scale}, produced, kernels, args.jobs)
    name = f"{device.type}-{machine}" + ("" if args.preset == "paper" else f"-{args.preset}")
    stem = args.stem or "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    while "--" in stem:
        stem = stem.replace("--", "-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(text + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": machine, "lanes": args.jobs, "command": command,
                                                       "scale": scale, "preset": args.preset, "produced_by": produced,
                                                       "kernels": kernels, "results": results}, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
