"""Rebuild the paper's tables from the runs' summary.json files: mean +- std over seeds per task and norm,
speed-up against LayerNorm as the paper computes it, the paper's own numbers beside ours, and plots."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from experiments.core.convergence import RULE as CONVERGENCE_RULE
from experiments.core.convergence import convergence
from experiments.core.identity import RESULT_KEYS, config_hash, identity_config
from experiments.core.records import ERROR_FILE, SUMMARY_FILE, read_metrics
from experiments.core.reporting.plots import finish, single_axes
from rmsnorm import REFERENCE_NORM, norm_names
from rmsnorm.stats import difference_interval, mean_interval, within_noise


def norm_rank(name: str) -> int:
    """The registry's report order; a norm no longer registered goes last."""
    order = norm_names()
    return order.index(name) if name in order else len(order)


def find_runs(roots: list[Path]) -> tuple[list[dict], list[dict]]:
    """(summaries, errors) of every run folder below the roots; each record carries its folder as `run_dir`."""
    summaries, errors = [], []
    for root in roots:
        for path in sorted(Path(root).rglob(SUMMARY_FILE)):
            summaries.append({**json.loads(path.read_text()), "run_dir": str(path.parent)})
        for path in sorted(Path(root).rglob(ERROR_FILE)):
            if not (path.parent / SUMMARY_FILE).exists():
                errors.append({**json.loads(path.read_text()), "run_dir": str(path.parent)})
    return summaries, errors


#: a run's clocks (experiments/core/training/timing.py): the prefix of their keys in summary.json's timing, and
#: their name in a table's header
CLOCKS = {"train": ("", "training"), "step": ("step_", "steps only"), "wall": ("wall_", "wall clock")}


def paper_clock(record: dict) -> str:
    """The clock the paper's time for the run's task matches (`Task.PAPER_CLOCK` of the task class its config
    builds); a record without that config gets the default."""
    from hydra.utils import get_class

    from experiments.core.training.task import Task

    builder = record.get("config", {}).get("task", {}).get("builder")
    target = builder.get("_target_") if isinstance(builder, dict) else None
    return get_class(target).PAPER_CLOCK if target else Task.PAPER_CLOCK


def speedup(t_layernorm: float, t: float) -> float:
    """The paper's speed-up in percent: (T_LN - T_X) / T_LN."""
    return 100.0 * (t_layernorm - t) / t_layernorm


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Row:
    norm: str
    seeds: int
    metric: tuple[float, float, float]  # mean over seeds and its 95% t interval
    sec_per_1k: tuple[float, float]
    paper_unit: tuple[float, float] | None  # in the paper's unit and clock (`Table.clock`): held against its time
    speedup: float | None = None
    at_best: tuple[float, float, float] | None = None  # the metric at the evaluation with the best validation score
    wall_unit: tuple[float, float] | None = None  # wall clock with evaluation, in the paper's unit (its measure)
    label: str = ""  # the norm, and where runs of it trained other settings, which of them (never averaged)
    values: list[float] = field(default_factory=list)  # the metric of each seed
    bps: list[float | None] = field(default_factory=list)  # each seed's BLEU brevity penalty (BLEU metrics)
    vs_reference: tuple[float, float, float] | None = None  # mean - LayerNorm's mean, 95% Welch interval
    seed_ids: list[int] = field(default_factory=list)  # the seed of each value
    convergence: list[dict] = field(default_factory=list)  # each seed's outcome of the convergence rule
    partial: list[str] = field(default_factory=list)  # its pRMSNorm layers' k (the runs' partial_statistics)

    @property
    def judged(self) -> list[dict]:
        """The outcomes of the seeds that logged a training loss (the rule can say nothing of the others)."""
        return [c for c in self.convergence if c.get("first_loss") is not None]

    @property
    def unconverged(self) -> list[int]:
        """The seeds whose logged training loss never met the convergence rule."""
        return [seed for seed, c in zip(self.seed_ids, self.convergence, strict=True)
                if c.get("first_loss") is not None and c.get("at_step") is None]

    def __post_init__(self) -> None:
        self.label = self.label or self.norm


@dataclass
class Table:
    task: str
    preset: str
    device: str
    metric: str
    time_unit: str | None
    rows: list[Row]
    missing: list[str] = field(default_factory=list)  # norms the task declares with no finished run here
    variant: str | None = None  # a model variant the task reports apart (the Transformer's norm placement)
    diverged: dict[str, list[int]] = field(default_factory=dict)  # norm -> steps where its runs' loss blew up
    selection: str | None = None  # the validation metric of the runs' at_best_<metric> (model selection)
    commits: list[str] = field(default_factory=list)  # the code the runs came from
    notes: list[str] = field(default_factory=list)  # e.g. which settings set two rows of one norm apart
    clock: str = "train"  # the clock of the paper's time (CLOCKS): the paper-unit column's and the speed-up's
    partial: dict[str, list[str]] = field(default_factory=dict)  # row label -> its pRMSNorm layers' k

    @property
    def title(self) -> str:
        return self.task + (f" ({self.variant})" if self.variant else "")

    @property
    def stem(self) -> str:
        return self.task + (f"-{self.variant}" if self.variant else "")


def run_convergence(record: dict) -> dict:
    """The run's convergence outcome (experiments/core/convergence.py): as its summary recorded it, or computed
    from its metrics.jsonl for summaries written before the rule."""
    if record.get("convergence") is not None:
        return record["convergence"]
    return convergence(read_metrics(Path(record["run_dir"]))) if record.get("run_dir") else convergence([])


def _loss_share(outcome: dict) -> float | None:
    first, last = outcome.get("first_loss"), outcome.get("last_loss")
    return round(last / first, 4) if first and last is not None else None


def seed_records(tables: list[Table]) -> list[dict]:
    """One row per run of every table (the per-seed values behind each mean), for a CSV beside the tables."""
    out = []
    for table in tables:
        scale = 100.0 if table.metric.endswith("_error") else 1.0
        for row in table.rows:
            bps = row.bps or [None] * len(row.values)
            for seed, value, outcome, bp in zip(row.seed_ids, row.values, row.convergence, bps, strict=True):
                known = outcome.get("first_loss") is not None
                step, share = outcome.get("at_step"), _loss_share(outcome)
                out.append({"task": table.task, "variant": table.variant or "", "preset": table.preset,
                            "norm": row.label, "seed": seed, "metric": table.metric,
                            "value": round(value * scale, 4), "converged": step is not None if known else "",
                            "converged_at_step": "" if step is None else step,
                            "last_loss_share": "" if share is None else share,
                            "brevity_penalty": "" if bp is None else bp})
    return out


def variant(record: dict) -> str | None:
    """What sets a run apart within its task and preset: the Transformer's pre-norm runs get a table of their
    own (post-norm, the paper's placement, is the task's plain table). Read from the run's config, which
    summaries and error records both carry."""
    model = record.get("config", {}).get("task", {}).get("model", {})
    position = model.get("norm_position") if isinstance(model, dict) else None
    return "pre-norm" if (position or record.get("norm_position")) == "pre" else None


def diverged_runs(errors: list[dict]) -> list[dict]:
    """The error records of runs whose training loss became NaN or inf (not crashes: results)."""
    return [e for e in errors if e.get("diverged_at_step") is not None and "task" in e]


def settings_key(record: dict) -> str:
    """What a table row averages over seeds: runs whose trained settings (the identity's config without the
    seed) and device are the same. Computed from the config every summary carries, old ones too."""
    return config_hash(record.get("config", {}), RESULT_KEYS, drop=("seed",), extra="|" + str(record.get("device", "")),
                       length=8)


def _settings_note(norm: str, groups: dict[str, list[dict]]) -> str:
    (ka, a), (kb, b) = list(groups.items())[:2]
    ca, cb = (identity_config(g[0].get("config", {}), RESULT_KEYS) for g in (a, b))
    diff = [f"{k}: {ca.get(k, '(unset)')} -> {cb.get(k, '(unset)')}" for k in sorted(set(ca) | set(cb))
            if k != "seed" and ca.get(k, "(unset)") != cb.get(k, "(unset)")]
    if a[0].get("device") != b[0].get("device"):
        diff.append(f"device: {a[0].get('device')} -> {b[0].get('device')}")
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    return (f"{norm}: {len(groups)} sets of runs with different settings, kept apart ([{ka}] vs [{kb}]: "
            f"{shown or 'no difference in the configs they record'}).")


def _settings_labels(groups: dict[str, list[dict]]) -> dict[str, str]:
    """A row label for each set of runs of one norm: the settings that tell the sets apart (`norm.p=0.125`),
    or the settings hash where their configs differ in more than a few keys."""
    configs = {key: identity_config(g[0].get("config", {}), RESULT_KEYS) for key, g in groups.items()}
    keys = sorted({k for c in configs.values() for k in c})
    differ = [k for k in keys if k != "seed" and len({repr(c.get(k)) for c in configs.values()}) > 1]
    if not differ or len(differ) > 3:
        return {key: key for key in groups}
    return {key: ", ".join(f"{k}={configs[key].get(k)}" for k in differ) for key in groups}


def _commits(runs: list[dict]) -> list[str]:
    found = {(r.get("commit") or (r.get("identity") or {}).get("commit") or "unknown")[:10] for r in runs}
    return sorted(found)


def build_tables(summaries: list[dict], errors: list[dict] = ()) -> list[Table]:
    """One table per (task, preset, variant) of the finished runs; runs that diverged get a row of their own
    (with the steps), beside their norm's finished seeds if any; a declared norm with no run at all is missing.
    Runs of one norm are averaged only where their settings and device agree (`settings_key`); others get a
    row of their own, labelled, with a note naming what differs."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["task"], s["preset"], variant(s) or ""), []).append(s)
    blown: dict[tuple[str, str, str], dict[str, list[int]]] = {}
    for e in diverged_runs(list(errors)):
        steps = blown.setdefault((e["task"], e["preset"], variant(e) or ""), {}).setdefault(e["norm"], [])
        steps.append(int(e["diverged_at_step"]))
    tables = []
    for (task, preset, kind), runs in sorted(groups.items()):
        metric = runs[0]["primary_metric"]
        unit = next((k for k in runs[0]["timing"] if k.startswith("sec_per_") and k != "sec_per_1k_steps"), None)
        clock = paper_clock(runs[0])
        # the column beside the paper's time: its unit in its clock (the training clock in sec/1k steps is the
        # table's own column already)
        paper_key = CLOCKS[clock][0] + (unit or "sec_per_1k_steps") if unit or clock != "train" else None
        by_norm: dict[str, dict[str, list[dict]]] = {}
        for r in runs:
            by_norm.setdefault(r["norm"], {}).setdefault(settings_key(r), []).append(r)
        rows, notes = [], []
        best_key = next((k for k in runs[0] if k.startswith("at_best_")), None)
        groups_in_order = []
        for norm in sorted(by_norm, key=norm_rank):
            # the set with the most runs first (the one the speed-up is taken against, for LayerNorm)
            groups = dict(sorted(by_norm[norm].items(), key=lambda kv: -len(kv[1])))
            if len(groups) > 1:
                notes.append(_settings_note(norm, groups))
            labels = _settings_labels(groups)
            groups_in_order += [(norm, labels[key], rs, len(groups) > 1) for key, rs in groups.items()]
        for norm, key, group_runs, several in groups_in_order:
            rs = [r for r in group_runs if r["timing"]["sec_per_1k_steps"] is not None]
            if not rs:
                continue
            picked = [r[best_key][metric] for r in rs if best_key and metric in r.get(best_key, {})]
            wall_key = f"wall_{unit or 'sec_per_1k_steps'}"
            walls = [r["timing"][wall_key] for r in rs if r["timing"].get(wall_key) is not None]
            papers = [r["timing"][paper_key] for r in rs if paper_key and r["timing"].get(paper_key) is not None]
            rows.append(Row(
                norm=norm,
                seeds=len(rs),
                seed_ids=[r["seed"] for r in rs],
                convergence=[run_convergence(r) for r in rs],
                partial=next((r["partial_statistics"] for r in rs if r.get("partial_statistics")), []),
                metric=mean_interval([r["metrics"][metric] for r in rs]),
                values=[r["metrics"][metric] for r in rs],
                bps=[r["metrics"].get(f"{metric}_bp") for r in rs],
                sec_per_1k=_mean_std([r["timing"]["sec_per_1k_steps"] for r in rs]),
                # runs from before the steps-only clock have no value in it: none for the row then
                paper_unit=_mean_std(papers) if paper_key and len(papers) == len(rs) else None,
                at_best=mean_interval(picked) if picked and len(picked) == len(rs) else None,
                wall_unit=_mean_std(walls) if len(walls) == len(rs) else None,
                label=f"{norm} [{key}]" if several else norm,
            ))
        ln = next((r for r in rows if r.norm == REFERENCE_NORM), None)
        for r in rows:
            if ln is not None:
                # in the paper's clock where every row has it, as the paper's speed-up beside it
                both = ln.paper_unit and r.paper_unit
                a, b = (ln.paper_unit, r.paper_unit) if both else (ln.sec_per_1k, r.sec_per_1k)
                r.speedup = speedup(a[0], b[0])
                if r is not ln:
                    r.vs_reference = difference_interval(r.values, ln.values)
        devices = sorted({r["device"] for r in runs})
        declared = [n for r in runs for n in r.get("config", {}).get("task", {}).get("norms", [])]
        diverged = {n: sorted(v) for n, v in blown.get((task, preset, kind), {}).items()}
        missing = [n for n in dict.fromkeys(declared) if n not in {row.norm for row in rows} and n not in diverged]
        selection = best_key.removeprefix("at_best_") if best_key and any(r.at_best for r in rows) else None
        partial = {row.label: row.partial for row in rows if row.partial}
        tables.append(Table(task, preset, ", ".join(devices), metric, unit, rows, sorted(missing, key=norm_rank),
                            kind or None, dict(sorted(diverged.items(), key=lambda kv: norm_rank(kv[0]))),
                            selection, _commits(runs), notes, clock, partial))
    return tables


def read_paper_table(paper_dir: Path, task: str) -> dict[str, dict]:
    path = Path(paper_dir) / f"{task}.csv"
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {row["norm"]: row for row in csv.DictReader(lines)}


def timing_key(result: dict) -> str:
    """The table a `scripts/bench_tasks.py` result belongs to: its `Table.stem` (task, and variant if any)."""
    return result["task"] + (f"-{result['variant']}" if result.get("variant") else "")


def read_interleaved_timing(paths: list[Path]) -> dict[str, dict[str, str]]:
    """From `scripts/bench_tasks.py` JSONs: table stem -> norm -> 'speed-up vs LayerNorm [95% interval]'."""
    from rmsnorm.interleaved import describe

    out: dict[str, dict[str, str]] = {}
    for path in paths:
        for res in json.loads(Path(path).read_text())["results"]:
            cells = out.setdefault(timing_key(res), {})
            for row in res["rows"]:  # row["norm"] is '<norm>' (fused) or '<norm>/<impl>'
                if "speedup_interval95" in row:
                    cells[row["norm"]] = describe(row["speedup_vs_layernorm"], tuple(row["speedup_interval95"]))
                elif row["norm"].split("/")[0] == REFERENCE_NORM:
                    cells[row["norm"]] = "reference"
    return out


def read_paper_long(paper_dir: Path, table: str) -> dict[tuple[str, str], str]:
    """(row, metric) -> value of one table of results/paper/tables.csv (every table of the paper, long form)."""
    path = Path(paper_dir) / "tables.csv"
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {(r["row"], r["metric"]): r["value"] for r in csv.DictReader(lines) if r["table"] == table}


def render_preactivation(summaries: list[dict], paper: dict[tuple[str, str], str]) -> str:
    """Table 5: mean / std of the decoder GRU's hidden-to-hidden pre-activation per norm (mean over seeds),
    from the runs' summaries, beside the paper's ALL column."""
    by_norm: dict[str, list[dict]] = {}
    for s in summaries:
        if "preactivation" in s:
            by_norm.setdefault(s["norm"], []).append(s["preactivation"])
    if not by_norm:
        return ""
    keys = ["1", "2", "3", "4", "all"]
    sets = sorted({p["set"] for runs in by_norm.values() for p in runs})
    lines = [f"Table 5: decoder GRU hidden-to-hidden pre-activation, mean / std on the {', '.join(sets)} set "
             "(teacher-forced; position = target token)", "",
             "| norm | " + " | ".join(f"pos {k}" if k != "all" else "ALL" for k in keys) + " | paper ALL |",
             "|---" * (len(keys) + 2) + "|"]
    for norm in sorted(by_norm, key=norm_rank):
        runs = by_norm[norm]
        cells = []
        for k in keys:
            means = [r[k][0] for r in runs if k in r]
            stds = [r[k][1] for r in runs if k in r]
            cells.append(f"{statistics.fmean(means):.2f} / {statistics.fmean(stds):.2f}" if means else "-")
        m, sd = paper.get((norm, "preact_mean_all")), paper.get((norm, "preact_std_all"))
        cells.append(f"{m} / {sd}" if m is not None else "-")
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt_metric(name: str, value: tuple[float, ...]) -> str:
    """'46.00 [44.12, 47.88]' (mean over seeds, 95% t interval) or the value of a single seed."""
    scale = 100.0 if name.endswith("_error") else 1.0
    mean, lo, hi = (v * scale for v in value)
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]" if hi > lo else f"{mean:.2f}"


def _fmt_difference(name: str, diff: tuple[float, float, float] | None) -> str:
    """The difference to LayerNorm's mean with its 95% Welch interval, 'within noise' where it spans 0."""
    if diff is None:
        return "-"
    scale = 100.0 if name.endswith("_error") else 1.0
    est, lo, hi = (v * scale for v in diff)
    return f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (" within noise" if within_noise((lo, hi)) else "")


def _fmt_converged(row: Row) -> str:
    """'3/3', or '2/3, not seed 1' naming the seeds that never met the convergence rule."""
    missed, judged = row.unconverged, len(row.judged)
    if not judged:
        return "-"
    text = f"{judged - len(missed)}/{judged}"
    return text + (f", not seed {', '.join(map(str, missed))}" if missed else "")


def _fmt_time(value: tuple[float, float], seeds: int) -> str:
    """Mean +- std over seeds; one seed's value alone (a single run has no spread to give)."""
    return f"{value[0]:.3g} +- {value[1]:.2g}" if seeds > 1 else f"{value[0]:.3g}"


def read_paper_speedups(paper_dir: Path, task: str) -> dict[str, dict[str, str]]:
    """The paper's printed speed-ups of every table of a task beyond its main one (translation: Table 3's
    Theano and PyTorch columns), table -> norm -> '34.0%', from results/paper/tables.csv."""
    path = Path(paper_dir) / "tables.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))
                if r["task"] == task and r["metric"] == "speedup"]
    tables = list(dict.fromkeys(r["table"] for r in rows))
    return {t: {r["row"]: f"{float(r['value']):+.1f}%" for r in rows if r["table"] == t} for t in tables[1:]}


def render_markdown(table: Table, paper: dict[str, dict], interleaved: dict[str, str] | None = None,
                    paper_speedups: dict[str, dict[str, str]] | None = None) -> str:
    """The table; with `interleaved` (norm -> speed-up text from the interleaved step timing) its speed-up
    column replaces the one computed from the runs' own clocks, which ran one after another; where that timing
    also ran the composite norms (`<norm>/composite`), a column for them; `paper_speedups` adds the paper's
    other tables' speed-ups (translation's Table 3) beside its own."""
    composite = {k.split("/")[0]: v for k, v in (interleaved or {}).items() if k.endswith("/composite")}
    paper_speedups = paper_speedups or {}
    unit = table.time_unit
    pct = " (%)" if table.metric.endswith("_error") else ""
    speed_head = "speed-up vs LN, interleaved [95% CI]" if interleaved else "speed-up vs LN"
    selected = [f"{table.metric}{pct} at best {table.selection}"] if table.selection else []
    # the wall clock with evaluation is the paper's measure: shown beside the training clock where runs have it
    walled = any(r.wall_unit for r in table.rows)
    wall_head = [f"wall {unit or 'sec/1k steps'}"] if walled else []
    composite_head = ["speed-up vs LN, composite ops [95% CI]"] if composite else []
    several = any(r.seeds > 1 for r in table.rows)
    diff_head = [f"{table.metric} vs LN [95% CI]"] if several else []
    # the time beside the paper's: its unit in its clock, the clock named unless it is the training one
    paper_col = unit if table.clock == "train" else f"{unit or 'sec/1k steps'}, {CLOCKS[table.clock][1]}"
    conv_head = ["converged"] if any(r.judged for r in table.rows) else []
    head = ([f"{table.metric}{pct}" + (" [95% CI]" if several else ""), *diff_head, *conv_head, *selected,
             "sec/1k steps"]
            + ([paper_col] if paper_col else []) + wall_head + [speed_head, *composite_head, "seeds"])
    # the paper's metric columns: the run's own when the paper has it, else every one the paper reports,
    # shown for reference with a note below the table (never matched by position)
    paper_metrics = _paper_metric_columns(paper)
    shown = [table.metric] if table.metric in paper_metrics else paper_metrics
    if paper:
        head += [f"paper {m}" for m in shown] + ["paper time", "paper speed-up"]
        head += [f"paper speed-up, {name}" for name in paper_speedups]
    lines = [
        f"### {table.title}, preset={table.preset}",
        f"device: {table.device}  ",
        f"commit: {', '.join(table.commits) or 'unknown'}",
        "",
        "| norm | " + " | ".join(head) + " |",
        "|---" * (len(head) + 1) + "|",
    ]
    paper_ln = paper.get(REFERENCE_NORM)
    for r in table.rows:
        cells = [_fmt_metric(table.metric, r.metric)]
        if several:
            cells.append("reference" if r.norm == REFERENCE_NORM and r.vs_reference is None
                         else _fmt_difference(table.metric, r.vs_reference))
        if conv_head:
            cells.append(_fmt_converged(r))
        if table.selection:  # Nematus' model selection: the test score where validation peaked
            cells.append(_fmt_metric(table.metric, r.at_best) if r.at_best else "-")
        cells.append(_fmt_time(r.sec_per_1k, r.seeds))
        if paper_col:
            cells.append(_fmt_time(r.paper_unit, r.seeds) if r.paper_unit else "-")
        if walled:
            cells.append(_fmt_time(r.wall_unit, r.seeds) if r.wall_unit else "-")
        own = f"{r.speedup:+.1f}%" if r.speedup is not None else "-"
        cells += [interleaved.get(r.norm, "-") if interleaved else own]
        if composite:
            cells.append(composite.get(r.norm, "-"))
        cells.append(str(r.seeds))
        if paper:
            p = paper.get(r.norm)
            if p is None:
                cells += ["-"] * (len(shown) + 2)
            else:
                sp = speedup(float(paper_ln["time"]), float(p["time"])) if paper_ln else None
                cells += [p.get(m) or "-" for m in shown] + [f"{p['time']} +- {p['time_std']}",
                                                              f"{sp:+.1f}%" if sp is not None else "-"]
            cells += [speeds.get(r.norm, "-") for speeds in paper_speedups.values()]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    for norm, steps in table.diverged.items():  # the paper's "fails" rows: shown as what happened, never dropped
        runs = f"{len(steps)} run{'s' if len(steps) > 1 else ''}"
        lines.append(f"| {norm} | diverged: training loss not finite by step {', '.join(map(str, steps))} "
                     f"({runs}) |" + " |" * (len(head) - 1))
    for norm in table.missing:  # failed or never run: marked, not dropped
        lines.append(f"| {norm} | missing: no finished run |" + " |" * (len(head) - 1))
    if conv_head:
        lines += ["", f"converged: the seeds whose {CONVERGENCE_RULE} (docs/demo.md, \"Convergence\"); a seed that "
                  "never did is named, and its score is when it left its plateau, not what the norm can reach."]
    for norm, stats in table.partial.items():
        lines += ["", f"{norm}'s statistic (k of each layer's d features or map positions): {'; '.join(stats)}."]
    if table.notes:
        lines += [""] + [f"Kept apart: {note}" for note in table.notes]
    if table.clock == "step":
        lines += ["", f"`{paper_col}` is the time to hold against the paper's: the training steps alone (forward, "
                  "backward, update), without building their batches, the calls the paper's scripts timed for this "
                  "task (`PAPER_CLOCK` of its `Task`)"
                  + ("." if interleaved else "; the speed-up vs LN is taken on it too.")]
    if paper and not paper_metrics:
        lines += ["", f"The paper gives no `{table.metric}` for this task (only times), so there is no column to "
                  "compare it with."]
    elif paper and table.metric not in paper_metrics:
        lines += ["", f"The runs' `{table.metric}` has no counterpart among the paper's columns "
                  f"({', '.join(paper_metrics)}): those are shown for reference, not compared."]
    return "\n".join(lines) + "\n"


def _paper_metric_columns(paper: dict[str, dict]) -> list[str]:
    """The metric columns of a results/paper CSV: everything but the norm and the time columns."""
    first = next(iter(paper.values()), {})
    return [c for c in first if c not in ("norm", "time", "time_std", "time_unit")]


def plot_task(table: Table, summaries: list[dict], out_png: Path) -> None:
    """The paper's Fig. 1 for one task, training loss against steps and against training wall-clock time, and
    beside it the evaluation curve of the task's metric (Fig. 5's validation curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_steps, ax_time, ax_eval) = plt.subplots(1, 3, figsize=(16, 4))
    for row in table.rows:
        run = min((s for s in summaries if s["task"] == table.task and s["preset"] == table.preset
                   and variant(s) == table.variant and s["norm"] == row.norm), key=lambda s: s["seed"])
        curve = [m for m in read_metrics(Path(run["run_dir"])) if "train_loss" in m]
        if not curve:
            continue
        steps = [m["step"] for m in curve]
        ax_steps.plot(steps, [m["train_loss"] for m in curve], label=row.norm)
        ax_time.plot([m["train_seconds"] for m in curve], [m["train_loss"] for m in curve], label=row.norm)
        evals = [m for m in read_metrics(Path(run["run_dir"])) if f"eval/{table.metric}" in m]
        ax_eval.plot([m["step"] for m in evals], [m[f"eval/{table.metric}"] for m in evals], marker="o",
                     label=row.norm)
    ax_eval.set_xlabel("training steps")
    ax_eval.set_ylabel(table.metric)
    ax_eval.grid(alpha=0.3)
    ax_steps.set_xlabel("training steps")
    ax_time.set_xlabel("training wall-clock (s)")
    for ax in (ax_steps, ax_time):
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    ax_steps.legend()
    fig.suptitle(f"{table.title}, preset={table.preset} (seed {min(s['seed'] for s in summaries)})")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_speed(task: str, result: dict, out_png: Path) -> None:
    """Seconds per step of each norm with the speed-up's 95% interval as error bars, from one task's entry
    of a `scripts/bench_tasks.py` JSON (interleaved timing)."""
    rows = result["rows"]
    ln = next((r for r in rows if r["norm"] == REFERENCE_NORM), None)
    fig, ax = single_axes((7, 4))
    for i, r in enumerate(rows):
        ms = 1e3 * r["sec_per_step"]
        err = None
        if ln is not None and "speedup_interval95" in r:
            t_ln = 1e3 * ln["sec_per_step"]
            lo, hi = r["speedup_interval95"]  # speed-up bounds -> time bounds: T = T_LN (1 - s)
            err = [[max(ms - t_ln * (1 - hi), 0.0)], [max(t_ln * (1 - lo) - ms, 0.0)]]
        ax.bar(i, ms, yerr=err, capsize=4, color="tab:gray" if r["norm"] == REFERENCE_NORM else "tab:blue")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["norm"] for r in rows], rotation=20)
    finish(fig, ax, "", "ms per training step (median over rounds)",
           f"{task}: whole training steps, norms interleaved (bars: 95% interval of the speed-up vs LN)", out_png,
           legend=False, title_size=9)
