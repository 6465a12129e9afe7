"""An evaluation curve per norm: python scripts/plot_curves.py RUN_DIR --metric eval/dev_bleu --out DIR

Reads metrics.jsonl and summary.json of every run below RUN_DIR and draws the metric against training steps,
one line per norm (mean over seeds, band min-max), as the paper's Fig. 4 (dev BLEU with the weight-init
centre at 0.2) and Fig. 5 (validation error). Writes <out>/<stem>.png and a markdown table of each norm's
curve with the command.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

from experiments.core.atomic import save_text
from experiments.core.provenance import describe, stamp
from experiments.core.records import read_metrics
from experiments.core.reporting.plots import finish, single_axes
from experiments.core.reporting.report import find_runs, norm_rank


def curves(summaries: list[dict], metric: str) -> dict[str, dict[int, list[float]]]:
    """norm -> step -> the metric at that step, one value per seed."""
    out: dict[str, dict[int, list[float]]] = {}
    for s in summaries:
        for record in read_metrics(Path(s["run_dir"])):
            if record.get(metric) is not None:
                out.setdefault(s["norm"], {}).setdefault(int(record["step"]), []).append(float(record[metric]))
    return {norm: dict(sorted(out[norm].items())) for norm in sorted(out, key=norm_rank)}


def render(by_norm: dict[str, dict[int, list[float]]], metric: str, command: str) -> str:
    steps = sorted({step for c in by_norm.values() for step in c})
    lines = [f"# {metric} against training steps", "", f"Command: `{command}`  ", f"Produced by: {describe(stamp())}  ",
             "Mean over seeds at each evaluation.", "",
             "| norm | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for norm, curve in by_norm.items():
        cells = [f"{statistics.fmean(curve[s]):.2f}" if s in curve else "-" for s in steps]
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(by_norm: dict[str, dict[int, list[float]]], metric: str, title: str, out_png: Path) -> None:
    fig, ax = single_axes((6.5, 4))
    for norm, curve in by_norm.items():
        steps = list(curve)
        ax.plot(steps, [statistics.fmean(v) for v in curve.values()], marker="o", label=norm)
        ax.fill_between(steps, [min(v) for v in curve.values()], [max(v) for v in curve.values()], alpha=0.15)
    finish(fig, ax, "training steps", metric, title, out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--metric", required=True, help="a key of metrics.jsonl, e.g. eval/dev_bleu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stem", default="curves")
    parser.add_argument("--title", default=None)
    parser.add_argument("--command", help="the command to record (default: this one)")
    args = parser.parse_args(argv)

    summaries, errors = find_runs([args.runs])
    by_norm = curves(summaries, args.metric)
    if not by_norm:
        print(f"no run below {args.runs} logged {args.metric}", file=sys.stderr)
        return 1
    command = args.command or "python scripts/plot_curves.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = render(by_norm, args.metric, command)
    if errors:
        text += "\nFailed runs:\n" + "".join(f"- {e['run_dir']}: {e['error']}\n" for e in errors)
    save_text(text, args.out / f"{args.stem}.md")
    title = args.title or f"{summaries[0]['task']}, preset={summaries[0]['preset']}: {args.metric}"
    plot(by_norm, args.metric, title, args.out / f"{args.stem}.png")
    print(text)
    print(f"wrote {args.out / args.stem}.md and .png")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
