"""The report rebuilds tables from summary.json files with the paper's speed-up formula."""

import json

import pytest

from experiments.core.atomic import save_json
from experiments.core.reporting.report import build_tables, find_runs, render_markdown, speedup
from tests.conftest import REPO, run_script


def _summary(norm, seed, err, sec):
    return {"task": "cifar10", "norm": norm, "seed": seed, "preset": "paper", "device": "cpu", "steps": 10,
            "primary_metric": "test_error", "metrics": {"test_error": err},
            "timing": {"sec_per_1k_steps": sec, "sec_per_epoch": sec / 2}}


@pytest.fixture
def runs(tmp_path):
    rows = [("layernorm", 0, 0.10, 40.0), ("layernorm", 1, 0.12, 38.0), ("rmsnorm", 0, 0.09, 30.0),
            ("rmsnorm", 1, 0.08, 32.0), ("none", 0, 0.2, 20.0)]
    for i, row in enumerate(rows):
        summary = _summary(*row)
        summary["baselines"] = {"test_error_most_frequent_class": 0.9}
        summary["differs_from_paper"] = ["task.model.widths: [96, 192] -> [4, 8]", f"norm.name: x -> {row[0]}"]
        save_json(summary, tmp_path / "runs" / f"{i}" / "summary.json")
    save_json({"error": "boom"}, tmp_path / "runs" / "9" / "error.json")
    return tmp_path / "runs"


def test_speedup_is_the_papers_formula():
    assert speedup(665, 501) == pytest.approx(24.66, abs=0.01)  # Table 2, RMSNorm vs LayerNorm


def test_tables_average_over_seeds_and_compare_with_layernorm(runs):
    summaries, errors = find_runs([runs])
    assert len(summaries) == 5 and len(errors) == 1
    (table,) = build_tables(summaries)
    rows = {r.norm: r for r in table.rows}
    assert [r.norm for r in table.rows] == ["none", "layernorm", "rmsnorm"]
    assert rows["rmsnorm"].seeds == 2 and rows["rmsnorm"].metric[0] == pytest.approx(0.085)
    assert rows["rmsnorm"].speedup == pytest.approx(100 * (39 - 31) / 39)
    paper = {"rmsnorm": {"norm": "rmsnorm", "test_error": "8.83", "time": "31", "time_std": "0.5"},
             "layernorm": {"norm": "layernorm", "test_error": "10.49", "time": "39", "time_std": "0.4"}}
    text = render_markdown(table, paper)
    assert "| rmsnorm | 8.50 [2.15, 14.85] | -2.50 [-16.71, +11.71] within noise |" in text and "+20.5%" in text


def test_a_declared_norm_without_a_finished_run_is_marked_missing(runs):
    summaries, _ = find_runs([runs])
    for s in summaries:
        s["config"] = {"task": {"norms": ["none", "batchnorm", "layernorm", "rmsnorm"]}}
    (table,) = build_tables(summaries)
    assert table.missing == ["batchnorm"]
    assert "| batchnorm | missing: no finished run |" in render_markdown(table, {})


def test_report_script_writes_tables_and_plot(runs, tmp_path):
    for i in range(5):
        record = {"step": 1, "train_seconds": 0.1, "train_loss": 2.0}
        (runs / f"{i}" / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    out = tmp_path / "out"
    r = run_script("scripts/report.py", str(runs), "--out", str(out))
    assert r.returncode == 1  # one run failed, and the report says so
    assert "Failed runs" in r.stdout and "boom" in r.stdout
    assert "Baselines without a model: test_error_most_frequent_class = 90.0%" in r.stdout
    assert "- `task.model.widths: [96, 192] -> [4, 8]`" in r.stdout and "norm.name" not in r.stdout
    assert (out / "tables.md").exists() and (out / "cifar10-paper-loss.png").stat().st_size > 1000


def test_interleaved_timing_fills_the_speedup_column_with_intervals(runs, tmp_path):
    timing = {"command": "python scripts/bench_tasks.py --preset demo", "results": [{"task": "cifar10", "rows": [
        {"norm": "none", "speedup_vs_layernorm": 0.3, "speedup_interval95": [0.25, 0.35]},
        {"norm": "layernorm"},
        {"norm": "rmsnorm", "speedup_vs_layernorm": 0.02, "speedup_interval95": [-0.01, 0.05]}]}]}
    path = tmp_path / "timing.json"
    path.write_text(json.dumps(timing))
    r = run_script("scripts/report.py", str(runs), "--timing", str(path))
    assert "speed-up vs LN, interleaved [95% CI]" in r.stdout
    assert "| none | 20.00 |" in r.stdout and "+30.0% [+25.0, +35.0] |" in r.stdout
    assert "+2.0% [-1.0, +5.0] within noise" in r.stdout and "| reference |" in r.stdout
    assert "python scripts/bench_tasks.py --preset demo" in r.stdout


def test_a_metric_the_paper_does_not_report_is_not_compared_with_its_columns(runs):
    summaries, _ = find_runs([runs])
    (table,) = build_tables(summaries)
    paper = {n: {"norm": n, "test14_bleu": "22.4", "test17_bleu": "23.7", "time": "501", "time_std": "11.8"}
             for n in ("layernorm", "rmsnorm")}
    text = render_markdown(table, paper)
    assert "paper test14_bleu | paper test17_bleu | paper time" in text
    assert "| rmsnorm | 8.50 [2.15, 14.85] |" in text and "| 22.4 | 23.7 | 501 +- 11.8 |" in text
    assert "`test_error` has no counterpart among the paper's columns (test14_bleu, test17_bleu)" in text


def test_a_variants_interleaved_timing_fills_its_own_table_only(tmp_path):
    from experiments.core.reporting.report import read_interleaved_timing

    rows = lambda sp: [{"norm": "layernorm"}, {"norm": "rmsnorm", "speedup_vs_layernorm": sp,  # noqa: E731
                                               "speedup_interval95": [sp - 0.01, sp + 0.01]}]
    (tmp_path / "post.json").write_text(json.dumps({"results": [{"task": "transformer", "rows": rows(0.05)}]}))
    (tmp_path / "pre.json").write_text(json.dumps({"results": [{"task": "transformer", "variant": "pre-norm",
                                                                "rows": rows(0.10)}]}))
    cells = read_interleaved_timing([tmp_path / "post.json", tmp_path / "pre.json"])
    assert cells["transformer"]["rmsnorm"].startswith("+5.0%")  # the plain table: Table.stem "transformer"
    assert cells["transformer-pre-norm"]["rmsnorm"].startswith("+10.0%")


def test_sweep_plot_groups_by_the_swept_setting_and_draws_the_reference(tmp_path):
    for i, (norm, p, bleu) in enumerate([("prmsnorm", 0.1, 20.0), ("prmsnorm", 0.1, 22.0), ("prmsnorm", 0.5, 23.0),
                                         ("rmsnorm", 0.0625, 24.0)]):
        save_json({"task": "translation", "norm": norm, "preset": "demo", "metrics": {"dev_bleu": bleu},
                   "config": {"norm": {"name": norm, "p": p}}}, tmp_path / "runs" / str(i) / "summary.json")
    r = run_script("scripts/plot_sweep.py", str(tmp_path / "runs"), "--param", "norm.p", "--metric", "dev_bleu",
                   "--reference", "rmsnorm", "--out", str(tmp_path / "out"), "--stem", "s")
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "out" / "s.md").read_text()
    assert "| 0.1 | 21.00 +- 1.41 | 2 |" in text and "| 0.5 | 23.00 +- 0.00 | 1 |" in text
    assert "| rmsnorm | 24.00 +- 0.00 | 1 |" in text  # the reference is a line, not a point at its own p
    assert (tmp_path / "out" / "s.png").stat().st_size > 1000
    r = run_script("scripts/plot_sweep.py", str(tmp_path / "runs"), "--param", "norm.p", "--metric", "test_bleu",
                   "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and "it has: dev_bleu" in r.stderr


def test_curves_plot_averages_each_norms_evaluations_over_seeds(tmp_path):
    for i, (norm, seed, values) in enumerate([("layernorm", 0, [1.0, 3.0]), ("layernorm", 1, [3.0, 5.0]),
                                              ("rmsnorm", 0, [2.0, 6.0])]):
        run = tmp_path / "runs" / str(i)
        save_json({"task": "translation", "norm": norm, "seed": seed, "preset": "demo", "metrics": {}},
                  run / "summary.json")
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": 50 * (k + 1), "train_loss": 1.0, "eval/dev_bleu": v}) + "\n"
            for k, v in enumerate(values)))
    r = run_script("scripts/plot_curves.py", str(tmp_path / "runs"), "--metric", "eval/dev_bleu",
                   "--out", str(tmp_path / "out"), "--stem", "c")
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "out" / "c.md").read_text()
    assert "| layernorm | 2.00 | 4.00 |" in text and "| rmsnorm | 2.00 | 6.00 |" in text
    assert (tmp_path / "out" / "c.png").stat().st_size > 1000


def test_the_transformers_pre_norm_runs_get_a_table_of_their_own():
    runs = []
    for position, sec in (("post", 40.0), ("pre", 50.0)):
        for norm in ("layernorm", "rmsnorm"):
            s = _summary(norm, 0, 0.1, sec if norm == "layernorm" else sec - 4)
            s.update(task="transformer", norm_position=position)
            runs.append(s)
    post, pre = build_tables(runs)
    assert (post.title, pre.title) == ("transformer", "transformer (pre-norm)")
    assert pre.stem == "transformer-pre-norm"
    assert [r.sec_per_1k[0] for r in pre.rows] == [50.0, 46.0]  # never averaged with the post-norm runs
    assert "### transformer (pre-norm), preset=paper" in render_markdown(pre, {})


def test_a_run_whose_loss_blew_up_is_a_row_of_its_table_not_a_missing_one(runs):
    summaries, _ = find_runs([runs])
    for s in summaries:
        s["config"] = {"task": {"norms": ["none", "batchnorm", "layernorm", "rmsnorm"]}}
    blown = {"error": "training loss became nan by step 7", "task": "cifar10", "norm": "batchnorm", "seed": 0,
             "preset": "paper", "diverged_at_step": 7, "config": {"task": {"model": {}}}}
    other_variant = {**blown, "norm": "none", "config": {"task": {"model": {"norm_position": "pre"}}}}
    (table,) = build_tables(summaries, [blown, other_variant, {"error": "boom"}])
    assert table.diverged == {"batchnorm": [7]} and table.missing == []
    assert "| batchnorm | diverged: training loss not finite by step 7 (1 run) |" in render_markdown(table, {})


def test_the_train_script_records_a_divergence_and_the_report_shows_it(smoke_data, tmp_path):
    """Adam at lr 1e30 blows any model up: the run ends with error.json naming the step, the sweep says a run
    failed, and the report shows the row as diverged (exit 0: a result, not a failure of the suite)."""
    sweep = tmp_path / "sweep"
    train = run_script("scripts/train.py", "-m", "task=transformer", "norm=rmsnorm,layernorm", "preset=smoke",
                       f"data_dir={smoke_data}", "logger=none", "train.progress=false", f"hydra.sweep.dir={sweep}",
                       "task.optim.lr=1e30", "task.optim.warmup=1", "train.log_every=1", "seed=0,1")
    assert train.returncode == 1 and "run(s) failed" in train.stderr
    errors = [json.loads(p.read_text()) for p in sweep.rglob("error.json")]
    assert len(errors) == 4 and all(e["diverged_at_step"] >= 1 and e["task"] == "transformer" for e in errors)
    # one finished run beside them: the table has it, and the blown-up norm as a diverged row
    ok = run_script("scripts/train.py", "task=transformer", "norm=layernorm", "preset=smoke", f"data_dir={smoke_data}",
                    "logger=none", "train.progress=false", f"hydra.run.dir={sweep}/ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    report = run_script("scripts/report.py", str(sweep))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "| rmsnorm | diverged: training loss not finite by step" in report.stdout
    assert "(2 runs)" in report.stdout and "Diverged runs" in report.stdout
    assert "| layernorm | diverged: training loss not finite by step" in report.stdout  # beside its finished run


def test_the_test_score_at_the_best_dev_score_gets_its_own_column():
    runs = []
    for norm, last, best in (("layernorm", 20.0, 22.0), ("rmsnorm", 21.0, 21.5)):
        s = _summary(norm, 0, 0.0, 30.0)
        s.update(task="translation", primary_metric="test_bleu", metrics={"test_bleu": last},
                 at_best_dev_bleu={"step": 3, "dev_bleu": 9.0, "test_bleu": best})
        runs.append(s)
    (table,) = build_tables(runs)
    assert table.selection == "dev_bleu" and [r.at_best[0] for r in table.rows] == [22.0, 21.5]
    text = render_markdown(table, {})
    assert "| norm | test_bleu | test_bleu at best dev_bleu | sec/1k steps | sec_per_epoch | speed-up vs LN |" in text
    assert "| layernorm | 20.00 | 22.00 |" in text
    for s, wall in zip(runs, (50.0, 44.0), strict=True):  # the wall clock with evaluation, where runs have it
        s["timing"]["wall_sec_per_epoch"] = wall
    (table,) = build_tables(runs)
    text = render_markdown(table, {})
    assert "| sec/1k steps | sec_per_epoch | wall sec_per_epoch | speed-up vs LN |" in text
    assert "| 15 | 50 |" in text


def test_the_translation_table_shows_the_papers_table_3_and_the_composite_speed_ups():
    from experiments.core.reporting.report import read_paper_speedups, read_paper_table

    speeds = read_paper_speedups(REPO / "results" / "paper", "translation")
    assert speeds == {"Table 3 (Theano)": {"rmsnorm": "+34.0%", "prmsnorm": "+33.4%"},
                      "Table 3 (PyTorch)": {"rmsnorm": "+11.0%", "prmsnorm": "+12.0%"}}
    runs = [{"task": "translation", "norm": n, "seed": 0, "preset": "paper", "device": "cpu", "steps": 10,
             "primary_metric": "test14_bleu", "metrics": {"test14_bleu": 20.0}, "timing": {"sec_per_1k_steps": t}}
            for n, t in (("layernorm", 10.0), ("rmsnorm", 9.0))]
    (table,) = build_tables(runs)
    interleaved = {"layernorm": "reference", "rmsnorm": "+5.0% [+1.0, +9.0]",
                   "layernorm/composite": "reference", "rmsnorm/composite": "+20.0% [+15.0, +25.0]"}
    text = render_markdown(table, read_paper_table(REPO / "results" / "paper", "translation"), interleaved, speeds)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head, rms = lines[0], next(line for line in lines if line.startswith("| rmsnorm |"))
    assert "speed-up vs LN, composite ops [95% CI]" in head and "paper speed-up, Table 3 (Theano)" in head
    def split(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    cells = dict(zip(split(head), split(rms), strict=True))
    assert cells["speed-up vs LN, composite ops [95% CI]"] == "+20.0% [+15.0, +25.0]"
    assert cells["paper speed-up, Table 3 (Theano)"] == "+34.0%"
    assert cells["paper speed-up, Table 3 (PyTorch)"] == "+11.0%"


def test_reading_and_retrievals_paper_time_column_is_the_steps_only_clock():
    """Their upstream scripts timed only the gradient and update calls (Task.PAPER_CLOCK = "step"): the column in
    the paper's unit, and the speed-up beside the paper's, are the steps-only clock, named in the header."""
    runs = []
    for norm, train, step in (("layernorm", 30.0, 20.0), ("rmsnorm", 29.0, 15.0)):
        s = _summary(norm, 0, 0.5, train)
        s.update(task="retrieval", primary_metric="caption_r1", metrics={"caption_r1": 50.0},
                 config={"task": {"builder": {"_target_": "experiments.retrieval.task.RetrievalTask"}}})
        s["timing"] = {"sec_per_1k_steps": train, "step_sec_per_1k_steps": step, "sec_per_100_steps": train / 10,
                       "step_sec_per_100_steps": step / 10}
        runs.append(s)
    (table,) = build_tables(runs)
    assert table.clock == "step" and [r.paper_unit[0] for r in table.rows] == [2.0, 1.5]
    assert table.rows[1].speedup == pytest.approx(25.0)  # (20 - 15) / 20, not (30 - 29) / 30
    text = render_markdown(table, {})
    assert "| sec/1k steps | sec_per_100_steps, steps only | speed-up vs LN |" in text
    assert "| rmsnorm | 50.00 | 29 | 1.5 | +25.0% |" in text and "the training steps alone" in text
    # runs from before the steps-only clock: no value rather than another clock's
    for s in runs:
        del s["timing"]["step_sec_per_100_steps"]
    (table,) = build_tables(runs)
    assert "| rmsnorm | 50.00 | 29 | - |" in render_markdown(table, {})
    # a task without a PAPER_CLOCK of its own keeps the training clock, its column unnamed as today
    from experiments.core.reporting.report import paper_clock

    assert paper_clock({"config": {"task": {"builder": {"_target_": "experiments.cifar10.task.Cifar10Task"}}}}) \
        == paper_clock({}) == "train"
    assert paper_clock({"config": {"task": {"builder": {"_target_": "experiments.reading.task.ReadingTask"}}}}) \
        == "step"


def test_the_convergence_rule_finds_the_first_step_below_its_share_of_the_first_loss():
    from experiments.core.convergence import SHARE, convergence

    curve = [{"step": 10, "train_loss": 2.5}, {"step": 20, "train_loss": 2.4}, {"step": 25, "eval/x": 1.0},
             {"step": 30, "train_loss": 2.5 * SHARE - 0.01}, {"step": 40, "train_loss": 1.0}]
    outcome = convergence(curve)
    assert outcome["at_step"] == 30 and outcome["first_loss"] == 2.5 and outcome["last_loss"] == 1.0
    plateau = [{"step": s, "train_loss": 2.3 + 0.01 * (s % 3)} for s in range(10, 260, 10)]
    assert convergence(plateau)["at_step"] is None  # sat on its plateau: never met the rule
    assert convergence([])["first_loss"] is None


def test_the_tables_name_the_seeds_that_never_converged_and_the_csv_lists_every_seed(runs, tmp_path):
    falling = [{"step": s, "train_seconds": 0.1 * s, "train_loss": 2.0 / s} for s in (1, 2, 3)]
    flat = [{"step": s, "train_seconds": 0.1 * s, "train_loss": 2.0} for s in (1, 2, 3)]
    for i in range(5):  # run 3 is rmsnorm seed 1: it stays on its plateau
        curve = flat if i == 3 else falling
        (runs / f"{i}" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    out = tmp_path / "out"
    run_script("scripts/report.py", str(runs), "--out", str(out))
    text = (out / "tables.md").read_text()
    assert "| converged |" in text
    assert "| rmsnorm | 8.50 [2.15, 14.85] | -2.50 [-16.71, +11.71] within noise | 1/2, not seed 1 |" in text
    assert "| layernorm | 11.00 [-1.71, 23.71] | reference | 2/2 |" in text
    lines = (out / "seeds.csv").read_text().splitlines()
    assert lines[0] == ("task,variant,preset,norm,seed,metric,value,converged,converged_at_step,last_loss_share,"
                        "brevity_penalty")
    assert "cifar10,,paper,rmsnorm,1,test_error,8.0,False,,1.0," in lines  # not a BLEU: no brevity penalty
    assert "cifar10,,paper,rmsnorm,0,test_error,9.0,True,2,0.3333," in lines
    assert len(lines) == 6


def test_runs_without_a_logged_loss_are_not_judged_by_the_convergence_rule(runs):
    (table,) = build_tables(find_runs([runs])[0])
    assert all(r.unconverged == [] and not r.judged for r in table.rows)
    assert "converged" not in render_markdown(table, {})


def test_runs_of_one_norm_at_different_settings_get_rows_labelled_by_those_settings():
    runs = []
    for p, err in ((0.0625, 0.3), (0.25, 0.1)):
        for seed in (0, 1):
            s = _summary("prmsnorm", seed, err + 0.01 * seed, 30.0)
            s["config"] = {"norm": {"name": "prmsnorm", "p": p}, "task": {"name": "cifar10"}, "seed": seed}
            runs.append(s)
    (table,) = build_tables(runs)
    assert sorted(r.label for r in table.rows) == ["prmsnorm [norm.p=0.0625]", "prmsnorm [norm.p=0.25]"]
    assert "| prmsnorm [norm.p=0.25] | 10.50 [4.15, 16.85] |" in render_markdown(table, {})
