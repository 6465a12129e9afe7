"""Rebuild the paper's tables from finished runs: python scripts/report.py RUN_DIR... [--out results/NAME]

Reads only summary.json, metrics.jsonl and error.json below the given folders. Prints the tables, and with
--out writes tables.md and one loss-curve plot per task there.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
from pathlib import Path

from experiments.core.atomic import save_text
from experiments.core.provenance import describe as describe_stamp
from experiments.core.provenance import stamp
from experiments.core.reporting.report import (
    build_tables,
    diverged_runs,
    find_runs,
    plot_speed,
    plot_task,
    read_interleaved_timing,
    read_paper_long,
    read_paper_speedups,
    read_paper_table,
    render_markdown,
    render_preactivation,
    seed_records,
    timing_key,
    variant,
)
from rmsnorm.interleaved import RATIO_RULE

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding run folders (Hydra sweep or run dirs)")
    parser.add_argument("--out", type=Path, help="write tables.md and plots here")
    parser.add_argument("--paper-dir", type=Path, default=REPO / "results" / "paper")
    parser.add_argument("--command", help="the command to record above the tables (default: this one)")
    parser.add_argument("--timing", type=Path, nargs="+", default=[],
                        help="scripts/bench_tasks.py JSONs: their interleaved speed-ups (with intervals) fill the "
                             "speed-up column of their tables instead of the runs' own clocks")
    args = parser.parse_args(argv)

    summaries, errors = find_runs(args.runs)
    if not summaries and not errors:
        print(f"no summary.json below {', '.join(map(str, args.runs))}: train something first", file=sys.stderr)
        return 1
    tables = build_tables(summaries, errors)
    diverged = diverged_runs(errors)
    errors = [e for e in errors if e not in diverged]
    command = args.command or "python scripts/report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = [f"Produced by `{command}` ({describe_stamp(stamp())}); each table names the commit(s) its runs came "
             "from.\n",
             "Time after warm-up: sec/1k steps is training, the steps with the building of their batches, "
             "evaluation and checkpoints paused out; the column in the paper's unit is in the clock the paper's "
             "time matches (each task's `Task.PAPER_CLOCK`), named in its header where it is not training "
             "('steps only': the steps alone, without building their batches, where the paper's scripts timed only "
             "the gradient and update calls); 'wall' adds evaluation and checkpoints back (each task's upstream "
             "clock: docs/protocol.md); speed-up = (T_LayerNorm - T_norm) / T_LayerNorm.\n"]
    interleaved = read_interleaved_timing(args.timing)
    for path in args.timing:
        parts.append(f"The speed-up column of {', '.join(sorted({timing_key(r) for r in _results(path)}))} comes "
                     f"from `{json.loads(path.read_text())['command']}` ({path}): every norm's model timed over "
                     "whole training steps, interleaved round-robin; the speed-up from "
                     f"{RATIO_RULE}; 'within noise' where it spans 0. The sec columns are each run's own clock (norms "
                     "run one after another).\n")
    for table in tables:
        # a table without interleaved timing shows the speed-up of its runs' own clocks
        parts.append(render_markdown(table, read_paper_table(args.paper_dir, table.task),
                                     interleaved.get(table.stem), read_paper_speedups(args.paper_dir, table.task)))
        if table.variant:
            parts.append(f"The paper's columns are its own runs ({table.task}'s paper placement), beside ours for "
                         "reference.\n")
        same = [s for s in summaries if s["task"] == table.task and s["preset"] == table.preset
                and variant(s) == table.variant]
        baselines = same[0].get("baselines") if same else None
        if baselines:  # model-free references from the data: fractions (most frequent answer, chance) or BLEU
            parts.append("Baselines without a model: " + ", ".join(
                f"{name} = {value:.2f}" if "bleu" in name else f"{name} = {100 * value:.1f}%"
                for name, value in baselines.items()) + "\n")
        # what every run of the table changed against preset=paper (per-norm settings aside)
        common = [set(s.get("differs_from_paper", [])) for s in same]
        shared = sorted(set.intersection(*common)) if common else []
        shared = [line for line in shared if not line.startswith("norm.")]
        if shared:
            parts.append("Differs from preset=paper (computed from the runs' configs):\n"
                         + "".join(f"- `{line}`\n" for line in shared))
        preactivation = render_preactivation(same, read_paper_long(args.paper_dir, "Table 5"))
        if preactivation:
            parts.append(preactivation)
    if diverged:  # results (the model could not be trained), not failures of the suite
        parts.append("Diverged runs (shown in their tables):\n"
                     + "".join(f"- {e['run_dir']}: {e['error']}\n" for e in diverged))
    if errors:
        parts.append("Failed runs:\n" + "".join(f"- {e['run_dir']}: {e['error']}\n" for e in errors))
    text = "\n".join(parts)
    print(text)
    if args.out:
        save_text(text, args.out / "tables.md")
        save_text(seeds_csv(seed_records(tables)), args.out / "seeds.csv")
        for table in tables:
            plot_task(table, summaries, args.out / f"{table.stem}-{table.preset}-loss.png")
        for path in args.timing:
            for result in _results(path):
                plot_speed(timing_key(result), result, args.out / f"{timing_key(result)}-speed.png")
        print(f"wrote {args.out / 'tables.md'}, seeds.csv (every run's value) and plots")
    return 1 if errors else 0


def seeds_csv(records: list[dict]) -> str:
    """The per-seed values behind the tables' means, one run a line."""
    out = io.StringIO()
    fields = ["task", "variant", "preset", "norm", "seed", "metric", "value", "converged", "converged_at_step",
              "last_loss_share", "brevity_penalty"]
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def _results(path: Path) -> list[dict]:
    return json.loads(path.read_text())["results"]


if __name__ == "__main__":
    sys.exit(main())
