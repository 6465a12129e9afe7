"""Refresh the README's and docs' figures from results/: python scripts/readme.py [--check]

Every number README.md and docs/*.md quote from a results file sits in a block

    <!-- generated: KIND SOURCE -->
    ...
    <!-- end generated -->

which this script rewrites from SOURCE (a file under results/). `make demo`, `make bench` and
`make bench-tasks` run it after writing their results; `--check` (a test runs it) exits 1 when a block
differs from what its source gives, so no figure in the README can drift from its file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from experiments.core.provenance import describe as describe_stamp
from rmsnorm.registry import REFERENCE_NORM

REPO = Path(__file__).resolve().parents[1]

# <!-- generated: KIND SOURCE [PART] -->: PART picks one piece of the source (one task's demo table)
BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+)(?: (\S+))? -->\n)(.*?)(<!-- end generated -->)", re.S)




def bench_cpu(source: Path) -> str:
    """Our RMSNorm against torch's LayerNorm (with intervals) and rms_norm at each shape, its share of the copy
    roofline, the GRU and LSTM tables, and the plain-process rows: computed from the bench's JSON with the
    bench's own functions (SOURCE: results/bench/<machine>.json)."""
    import bench  # scripts/bench.py, beside this script
    import torch

    data = json.loads(source.read_text())
    results, rooflines = bench.from_json(data)
    size = torch.finfo(getattr(torch, data["dtype"])).bits // 8
    lines = [f"**STALE: {data['stale']}**", ""] if data.get("stale") else []
    lines += [f"Produced by: {describe_stamp(data['produced_by'])}", "",
             "| shape (rows x d) | our RMSNorm fwd / LN | fwd+bwd / LN | fwd % copy | bwd % copy | "
             "fwd+bwd / torch `rms_norm` |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r.task, r.shape, r.rows, r.d) for r in results):
        group = {r.impl: r for r in results if (r.task, r.shape, r.rows, r.d) == key}
        ours, ln, torch_rms = group["rmsnorm (ours)"], group["layernorm (torch)"], group["rms_norm (torch)"]
        nbytes = key[2] * key[3] * size
        copy = rooflines[key].gbps(nbytes)
        lines.append(f"| {key[2]} x {key[3]} ({key[0]}) | {bench._ratio(ours, ln, 'fwd')} | "
                     f"{bench._ratio(ours, ln, 'fwd_bwd')} | {100 * 2 * nbytes / ours.fwd / 1e9 / copy:.0f}% | "
                     f"{100 * 3 * nbytes / ours.bwd / 1e9 / copy:.0f}% | {ours.fwd_bwd / torch_rms.fwd_bwd:.2f} |")
    for part in (bench.render_rnn(data["rnn"]), bench.render_plain(data["plain"], data["dtype"])):
        lines += [""] + [f"{line[3:]}:" if line.startswith("## ") else line for line in part.strip().splitlines()]
    return "\n".join(lines)


def demo(source: Path) -> str:
    """The demo's tables as `make demo` wrote them, without their preamble."""
    text = source.read_text()
    start = text.find("### ")
    return text[start:].strip() if start >= 0 else text.strip()


def demo_task(source: Path, title: str) -> str:
    """One table of the demo's tables.md with its notes: the section headed '### <title>, preset=...'
    (title: the task, or e.g. 'transformer (pre-norm)' written with '_' for the spaces)."""
    sections = demo(source).split("\n### ")
    wanted = title.replace("_", " ") + ", preset="
    found = [s for s in sections if s.removeprefix("### ").startswith(wanted)]
    if not found:
        raise SystemExit(f"{source} has no table '{wanted}...'")
    return "### " + found[0].removeprefix("### ").strip()


def bench_tasks(source: Path) -> str:
    """Seconds per step, speed-up vs LayerNorm and the norm's share of the step, with intervals, per task."""
    from rmsnorm.interleaved import describe

    data = json.loads(source.read_text())
    stamp = data.get("produced_by")
    made = f" (commit {stamp['commit'][:10]}, torch {stamp['torch']})" if stamp else ""
    lines = [f"**STALE: {data['stale']}.**", ""] if data.get("stale") else []
    lines += [f"{data['machine']}, scale {data['scale']:g}{made}:", "",
             "| task | norm | ms / step | speed-up vs LayerNorm [95% CI] | norm's share of the step [95% CI] |",
             "|---|---|---|---|---|"]
    for res in data["results"]:
        for row in res["rows"]:
            if "speedup_interval95" in row:
                sp = describe(row["speedup_vs_layernorm"], tuple(row["speedup_interval95"]))
            else:
                sp = "reference" if row["norm"] == REFERENCE_NORM else ""
            share = describe(row["norm_share"], tuple(row["norm_share_interval95"])) if "norm_share" in row else "-"
            lines.append(f"| {res['task']} | {row['norm']} | {1e3 * row['sec_per_step']:.2f} | {sp} | {share} |")
    return "\n".join(lines)


def table(source: Path) -> str:
    """The first markdown table of a results file, as it is."""
    rows = [line for line in source.read_text().splitlines() if line.startswith("|")]
    return "\n".join(rows)


def protocol(source: Path) -> str:
    """The upstream protocol against preset=paper, one table per task, from its CSV
    (tests/experiments/core/test_configs.py checks every row that names a config key against the composed config)."""
    import csv

    with source.open() as f:
        rows = list(csv.DictReader(f))
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [f"**{task}**", "", "| setting | upstream | from | ours (preset=paper) | why they differ |",
                  "|---|---|---|---|---|"]
        for r in (r for r in rows if r["task"] == task):
            ours = f"`{r['key']}={r['ours']}`" if r["key"] else r["ours"]
            lines.append(f"| {r['setting']} | {r['upstream']} | {r['source']} | {ours} | {r['why they differ']} |")
        lines.append("")
    return "\n".join(lines).strip()


def _demo_cells(text: str) -> dict[str, dict]:
    """task (with its variant) -> {"metric": name, "layernorm": cell, "rmsnorm": cell} from the demo's tables.md."""
    out, task, head = {}, None, None
    for line in text.splitlines():
        if line.startswith("### "):
            task = line[4:].split(", preset=")[0].strip()
            head = None
        elif task and line.startswith("| norm |"):
            if task in out:  # only the task's main table (Table 5's pre-activations follow translation's)
                task = None
                continue
            head = [c.strip() for c in line.strip("|").split("|")]
            out[task] = {"metric": head[1]}
        elif task and head and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[task][cells[0]] = cells[1]
    return out


def glance(source: Path) -> str:
    """One row per task: the paper's RMSNorm speed-up over LayerNorm, ours from every bench-tasks file under
    SOURCE/bench-tasks (stale ones named as such), the demo's quality for LayerNorm and RMSNorm, and what has
    run at paper scale (SOURCE: the results folder)."""
    import csv

    from rmsnorm.interleaved import describe

    with (source / "paper" / "tables.csv").open() as f:
        paper = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))
                 if r["row"] == "rmsnorm" and r["metric"] == "speedup"]
    machines = []
    for path in sorted((source / "bench-tasks").glob("*.json")):
        data = json.loads(path.read_text())
        label = data["machine"].replace("(R)", "").replace("  ", " ") + (", STALE" if data.get("stale") else "")
        cells = {}
        for res in data["results"]:
            if res.get("variant"):
                continue
            found = {r["norm"]: r for r in res["rows"] if "speedup_interval95" in r}
            texts = [f"{label}{describe(found[key]['speedup_vs_layernorm'], tuple(found[key]['speedup_interval95']))}"
                     for key, label in (("rmsnorm", ""), ("rmsnorm/composite", "composite ops: ")) if key in found]
            ln = next((r for r in res["rows"] if r["norm"] == REFERENCE_NORM and "norm_share" in r), None)
            if ln is not None:  # the most any norm could buy there: LayerNorm's whole share of the step (Amdahl)
                profiled = ln.get("norm_share_profiled")
                texts.append("LayerNorm's share of the step, the bound on any norm's speed-up: "
                             + describe(ln["norm_share"], tuple(ln["norm_share_interval95"]))
                             + (f" (profiler-attributed: {100 * profiled:.1f}%)" if profiled is not None else ""))
            if texts:
                cells[res["task"]] = "; ".join(texts)
        machines.append((label, cells, f"[{path.name}](results/bench-tasks/{path.name}) (scale {data['scale']:g})"))
    demo = _demo_cells((source / "demo" / "tables.md").read_text())
    tasks = sorted({r["task"] for r in paper})
    head = ["task", "paper: RMSNorm speed-up vs LayerNorm"] + [f"ours: {m}" for m, _, _ in machines]
    head += ["demo quality, LayerNorm / RMSNorm", "paper scale"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for task in tasks:
        speeds = "; ".join(f"{r['value']}% ({r['table']})" for r in paper if r["task"] == task)
        cells = [task, speeds] + [m.get(task, "not measured") for _, m, _ in machines]
        d = demo.get(task, {})
        cells.append(f"{d.get('layernorm', '-')} / {d.get('rmsnorm', '-')} ({d.get('metric', '-')})" if d else "-")
        cells.append("not run")
        lines.append("| " + " | ".join(cells) + " |")
    sources = [source for _, _, source in machines] + ["[results/paper/tables.csv](results/paper/tables.csv)",
                                                       "[results/demo/tables.md](results/demo/tables.md)"]
    lines += ["", "From " + "; ".join(sources) + "."]
    return "\n".join(lines)


def paper_csv(source: Path) -> str:
    """A results/paper/<task>.csv as a markdown table, its comment line above it."""
    import csv

    lines = source.read_text().splitlines()
    comments = [line[2:] for line in lines if line.startswith("# ")]
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    out = [f"{' '.join(comments)} ([{source.name}](../results/paper/{source.name}))", "",
           "| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def timing(source: Path, command: str) -> str:
    """The newest recorded time of one command (COMMAND with '_' for spaces: make_demo), from results/timings.csv."""
    import timings  # scripts/timings.py, beside this script

    row = timings.newest(command.replace("_", " "), timings.read(source))
    if row is None:
        raise SystemExit(f"{source} has no timing of '{command.replace('_', ' ')}'; run it (scripts/timings.py)")
    return f"Measured: {timings.describe(row)} ([history](docs/timings.md))."


def timing_history(source: Path) -> str:
    """Every recorded time, newest first, from results/timings.csv."""
    import timings

    lines = ["| command | time | stages | host | date (UTC) | commit | note |", "|---|---|---|---|---|---|---|"]
    for row in reversed(timings.read(source)):
        stages = ", ".join(f"{k} {timings.duration(v)}" for k, v in (p.split("=") for p in row["stages"].split()))
        lines.append(f"| `{row['command']}` | {timings.duration(row['seconds'])} | {stages or '-'} | "
                     f"{row['cores']}-core {row['machine']} | {row['date']} {row['utc']} | {row['commit']}"
                     f"{' (uncommitted changes)' if row.get('dirty') == 'yes' else ''} | {row['note'] or '-'} |")
    return "\n".join(lines)


#: steps in one epoch of the real training set at preset=paper, where the paper's time is per epoch or its schedule
#: is set in epochs (CIFAR-10: 50,000 images in batches of 100; the paper's runs, docs/paper.md)
STEPS_PER_EPOCH = {"cifar10": 500}
# retrieval: one step per 128 training images; the archive's train split is COCO's train2014 (82,783 images) or,
# with Karpathy's "restval", 113,287: the upstream README does not say which, so the estimate spans both
STEPS_PER_EPOCH_RANGE = {"retrieval": (82783 // 128, 113287 // 128)}
UNIT_STEPS = {"sec_per_1k_steps": 1000, "sec_per_100_steps": 100}


def replicate(source: Path) -> str:
    """Per task at preset=paper: the sweep `make replicate-<task>` runs, an estimate of its GPU time made from the
    paper's own reported time per step (or epoch) of LayerNorm on its GPU and the preset's step count, and of its
    memory from `scripts/step_memory.py` (SOURCE: the results folder: paper/ and replicate/step-memory.json)."""
    import csv

    memory_file = source / "replicate" / "step-memory.json"
    memory = {r["task"]: r for r in json.loads(memory_file.read_text())["results"]} if memory_file.exists() else {}
    source = source / "paper"

    from tasks import task_names  # scripts/tasks.py, beside this script

    from experiments.core.training.config import compose_config

    seeds = 3  # the Makefile's SEEDS
    lines = ["| task | `make replicate-<task>` runs | steps a run | the paper's LayerNorm time (its GPU) | "
             "estimated GPU hours: one run / the whole sweep | memory of one run, GB: weights + Adam + a step's "
             "peak (float32) |", "|---|---|---|---|---|---|"]
    for task in task_names():
        cfg = compose_config([f"task={task}", "preset=paper"])
        norms = list(cfg.task.norms)
        steps = cfg.train.max_steps or (cfg.train.epochs * STEPS_PER_EPOCH[task] if task in STEPS_PER_EPOCH
                                        else None)
        path = source / f"{task}.csv"
        rows = {}
        if path.exists():
            lines_csv = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
            rows = {r["norm"]: r for r in csv.DictReader(lines_csv)}
        ln = rows.get(REFERENCE_NORM)
        paper_time, estimate = "-", "not estimated (steps per epoch depend on the data)"
        if ln is not None and task in STEPS_PER_EPOCH_RANGE and cfg.train.epochs:
            unit = ln["time_unit"]
            paper_time = f"{ln['time']} s per {unit.removeprefix('sec_per_').replace('_', ' ')}"
            low, high = (float(ln["time"]) / UNIT_STEPS[unit] * n * cfg.train.epochs / 3600
                         for n in STEPS_PER_EPOCH_RANGE[task])
            steps = "-"
            estimate = (f"{low:.1f}-{high:.1f} / {low * len(norms) * seeds:.0f}-{high * len(norms) * seeds:.0f} "
                        f"({' or '.join(str(n) for n in STEPS_PER_EPOCH_RANGE[task])} steps an epoch)")
        elif ln is not None:
            unit = ln["time_unit"]
            paper_time = f"{ln['time']} s per {unit.removeprefix('sec_per_').replace('_', ' ')}"
            per_step = (float(ln["time"]) / UNIT_STEPS[unit] if unit in UNIT_STEPS
                        else float(ln["time"]) / STEPS_PER_EPOCH[task] if task in STEPS_PER_EPOCH else None)
            if per_step is not None and steps:
                one = per_step * steps / 3600
                estimate = f"{one:.1f} / {one * len(norms) * seeds:.0f}"
        epochs = f" ({cfg.train.epochs} epochs)" if cfg.train.epochs else ""
        m = memory.get(task)
        mem = (f"{(m['parameters_bytes'] + m['optimizer_state_bytes'] + m['step_peak_bytes']) / 1e9:.1f} "
               f"({m['batch']})") if m and m.get("step_peak_bytes") else "not measured"
        lines.append(f"| {task} | {len(norms)} norms ({', '.join(norms)}) x {seeds} seeds | "
                     f"{steps or '-'}{epochs} | {paper_time} | {estimate} | {mem} |")
    return "\n".join(lines)


def bench_model(source: Path) -> str:
    """A `make bench-model` result as the script wrote it, without its title line."""
    return source.read_text().split("\n", 1)[1].strip()


def bench_prepare(source: Path) -> str:
    """`scripts/bench_prepare.py`'s before/after of translation data preparation: medians over its rounds, and the
    data loader against the training steps (SOURCE: results/prepare/bench.json)."""
    data = json.loads(source.read_text())
    lines = []
    if data.get("dry_run"):
        lines += [f"**DRY RUN at {data['pairs']} pairs, not a measurement**: it shows the script runs end to end; "
                  f"the comparison is `python scripts/bench_prepare.py --before {data['before'][:7]}` at its "
                  "default 200,000 pairs, run on a quiet machine.", ""]
    made = data["produced_by"]
    lines += [f"Produced by: {describe_stamp(made)}  ", f"Command: `{data['command']}`  ",
              f"{data['pairs']} WMT-shaped training pairs in {data['shards']} parquet files, BPE of "
              f"{data['bpe_vocab']} pieces, {data['cores']} cores; medians over {data['rounds']} rounds, each code "
              "in its own process from an empty folder, alternating which goes first.", "",
              "| code | prepare, s | prepare again, s | peak RSS of the largest process, MB | peak RSS of all its "
              "processes, MB | data loader, batches/s | training, steps/s |", "|---|---|---|---|---|---|---|"]
    labels = {"before": f"before: {data['before'][:10]} (JSON lines)", "after": f"after: {made['commit'][:10]} "
              f"(`datasets` {data['versions'].get('datasets')})"}
    for code in ("before", "after"):
        row, loader = data["summary"][code], data["loader"].get(code, {})
        lines.append(f"| {labels[code]} | {row['prepare_s']:.1f} | {row['again_s']:.1f} | {row['max_rss_mb']:.0f} | "
                     f"{row['tree_peak_rss_mb']:.0f} | {loader.get('batches_per_s', float('nan')):.1f} | "
                     f"{loader.get('steps_per_s', float('nan')):.3f} |")
    return "\n".join(lines)


KINDS = {"bench-model": bench_model, "rnn-plain": bench_model, "bench-prepare": bench_prepare,
         "replicate": replicate, "timing": timing, "timings": timing_history,
         "glance": glance, "paper-csv": paper_csv, "bench-cpu": bench_cpu, "demo": demo, "bench-tasks": bench_tasks,
         "table": table, "protocol": protocol, "demo-task": demo_task}


def render(readme: str) -> str:
    def fill(match: re.Match) -> str:
        kind, source, part = match.group(2), REPO / match.group(3), match.group(4)
        if kind not in KINDS:
            raise SystemExit(f"README block of unknown kind '{kind}'; known: {', '.join(KINDS)}")
        if not source.exists():
            raise SystemExit(f"README block {kind} reads {source}, which does not exist")
        body = KINDS[kind](source, part) if part else KINDS[kind](source)
        return f"{match.group(1)}{body}\n{match.group(6)}"

    return BLOCK.sub(fill, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs from its sources")
    parser.add_argument("--readme", type=Path, nargs="+", default=None,
                        help="the files to refresh (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.readme or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        new = render(text)
        if args.check:
            if new != text:
                print(f"{path}: generated blocks differ from results/; run python scripts/readme.py", file=sys.stderr)
                status = 1
        elif new != text:
            path.write_text(new)
            print(f"refreshed the generated blocks of {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
