"""One metric against one swept setting: python scripts/plot_sweep.py RUN_DIR --param norm.p --metric dev_bleu

Reads the summary.json of every run below RUN_DIR. Runs whose norm is `--reference` (e.g. rmsnorm, which has
no p) become a horizontal line with its band over seeds; the others are grouped by the value of `--param`
(a dotted key of the run's config) and drawn as mean +- std over seeds. Writes <out>/<stem>.png and a
markdown table with the command, as `make sweep-p` does for the paper's Fig. 3.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

from experiments.core.atomic import save_text
from experiments.core.provenance import describe, stamp
from experiments.core.reporting.plots import finish, single_axes
from experiments.core.reporting.report import find_runs


def lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(summaries: list[dict], param: str, metric: str, reference: str | None):
    swept: dict[float, list[float]] = {}
    ref: list[float] = []
    for s in summaries:
        value = s["metrics"][metric]
        if reference and s["norm"] == reference:
            ref.append(value)
        else:
            swept.setdefault(float(lookup(s["config"], param)), []).append(value)
    return dict(sorted(swept.items())), ref


def render(swept, ref, param: str, metric: str, reference: str | None, command: str, norms: list[str]) -> str:
    lines = [f"# {metric} against {param}", "", f"Command: `{command}`  ", f"Produced by: {describe(stamp())}  ",
             f"Swept norm: {', '.join(norms)}; mean +- std over seeds (n per point in the last column).", "",
             f"| {param} | {metric} | n |", "|---|---|---|"]
    for x, values in swept.items():
        mean, std = _mean_std(values)
        lines.append(f"| {x:g} | {mean:.2f} +- {std:.2f} | {len(values)} |")
    if ref:
        mean, std = _mean_std(ref)
        lines.append(f"| {reference} | {mean:.2f} +- {std:.2f} | {len(ref)} |")
    return "\n".join(lines) + "\n"


def plot(swept, ref, param: str, metric: str, reference: str | None, title: str, out_png: Path,
         label: str = "swept") -> None:
    fig, ax = single_axes((6, 4))
    xs = list(swept)
    stats = [_mean_std(v) for v in swept.values()]
    ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=label)
    if ref:
        mean, std = _mean_std(ref)
        ax.axhline(mean, color="black", lw=1, label=reference)
        if std:
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.1)
    finish(fig, ax, param, metric, title, out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--param", required=True, help="dotted config key swept, e.g. norm.p")
    parser.add_argument("--metric", required=True, help="a key of the runs' final metrics, e.g. dev_bleu")
    parser.add_argument("--reference", help="norm drawn as a horizontal line (its runs have no such param)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stem", default=None, help="file name without suffix (default: <param>-<metric>)")
    parser.add_argument("--command", help="the command to record (default: this one)")
    args = parser.parse_args(argv)

    summaries, errors = find_runs([args.runs])
    if not summaries:
        print(f"no summary.json below {args.runs}", file=sys.stderr)
        return 1
    missing = [s["run_dir"] for s in summaries if args.metric not in s["metrics"]]
    if missing:
        raise SystemExit(f"--metric {args.metric} is not among the final metrics of {missing[0]}; "
                         f"it has: {', '.join(summaries[0]['metrics'])}")
    swept, ref = collect(summaries, args.param, args.metric, args.reference)
    norms = sorted({s["norm"] for s in summaries if s["norm"] != args.reference})
    command = args.command or "python scripts/plot_sweep.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = render(swept, ref, args.param, args.metric, args.reference, command, norms)
    if errors:
        text += "\nFailed runs:\n" + "".join(f"- {e['run_dir']}: {e['error']}\n" for e in errors)
    stem = args.stem or f"{args.param}-{args.metric}".replace(".", "_")
    task = summaries[0]["task"]
    save_text(text, args.out / f"{stem}.md")
    plot(swept, ref, args.param, args.metric, args.reference,
         f"{task}, preset={summaries[0]['preset']}: {args.metric} vs {args.param}", args.out / f"{stem}.png",
         label=", ".join(norms))
    print(text)
    print(f"wrote {args.out / stem}.md and .png")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
