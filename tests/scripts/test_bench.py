"""`make bench` runs end to end (timings themselves are never asserted: they live in results/bench)."""

import json
import sys

import pytest

from tests.conftest import run_script


def test_bench_quick_writes_table_and_plot(tmp_path):
    r = run_script("scripts/bench.py", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    (md,) = tmp_path.glob("*.md")
    text = md.read_text()
    assert "Command: `python scripts/bench.py --quick --device cpu" in text
    main, plain = text.split("## A plain process")
    for impl in ("none (x*g)", "layernorm (torch)", "rms_norm (torch)", "rmsnorm (ours)", "prmsnorm (ours",
                 "l2norm (ours)", "layernorm (composite)", "rmsnorm (composite)", "prmsnorm (composite",
                 "l2norm (composite)"):
        assert main.count(f"| {impl}") == 2, impl  # one row per shape
    assert main.count("Roofline: copy into a preallocated tensor") == 2
    assert "% copy" in main and "[" in main  # shares of the roofline, ratios with intervals
    # the plain-process run (no malloc settings) measured ours and LayerNorm at both shapes
    assert plain.count("| rmsnorm (ours) |") == 2 and plain.count("| layernorm (torch) |") == 2
    assert md.with_suffix(".png").stat().st_size > 1000
    # the measurements themselves, every round, with what produced them
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["produced_by"]["commit"] and data["produced_by"]["torch"]
    assert len(data["results"]) == 2 * 10 and all(len(x["times"]["fwd"]) == 2 for x in data["results"])
    assert f"Produced by: commit {data['produced_by']['commit'][:10]}" in text
    # the recurrent layers: ours on the native op, the Python loop beside it, torch's layer as the reference
    rnn = {(r["kind"], r["norm"]): r for r in data["rnn"]}
    assert rnn[("GRU", "rmsnorm")]["native"] is True and rnn[("GRU", "rmsnorm (Python loop)")]["native"] is False
    assert all(len(r["rounds"]) == 2 for r in data["rnn"])
    assert "| ours, rmsnorm (Python loop) |" in text and "added / LN's added [95%]" in text
    # the markdown is a rendering of the JSON: rendered again from it, nothing measured, it is the same file
    md.unlink()
    r = run_script("scripts/bench.py", "--render", str(md.with_suffix(".json")))
    assert r.returncode == 0, r.stderr[-2000:]
    assert md.read_text() == text


def test_bench_tasks_interleaves_every_norm_and_writes_intervals(tmp_path):
    # the paper models at a tiny batch; widths stay the paper's, so only a few steps
    r = run_script("scripts/bench_tasks.py", "--device", "cpu", "--scale", "0.02", "--rounds", "2", "--steps", "1",
                   "--warmup", "1", "--tasks", "cifar10", "--out", str(tmp_path), "--data-dir", str(tmp_path / "none"),
                   "--impls", "fused,composite")
    assert r.returncode == 0, r.stderr[-2000:]
    (md,) = tmp_path.glob("*.md")
    text = md.read_text()
    for norm in ("none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm"):
        assert f"| {norm} |" in text, norm
    assert "| layernorm | " in text and "reference" in text
    # every norm but LayerNorm has a speed-up with its interval, every norm but none its share of the step; the
    # composite rows (LayerNorm, RMSNorm, pRMSNorm) the same, their speed-ups against the composite LayerNorm
    assert text.count("% [") == (5 + 5) + (2 + 3)
    rows = {row["norm"]: row for row in json.loads(next(tmp_path.glob("*.json")).read_text())["results"][0]["rows"]}
    assert {"layernorm/composite", "rmsnorm/composite", "prmsnorm/composite"} <= set(rows)
    assert "batchnorm/composite" not in rows and rows["rmsnorm/composite"]["impl"] == "composite"
    from rmsnorm.interleaved import speedup

    ln_c, rms_c = rows["layernorm/composite"]["rounds"], rows["rmsnorm/composite"]["rounds"]
    assert rows["rmsnorm/composite"]["speedup_vs_layernorm"] == pytest.approx(speedup(ln_c, rms_c))
    assert "norm_share" not in rows["none"]
    t, t_none = rows["rmsnorm"]["rounds"], rows["none"]["rounds"]
    assert rows["rmsnorm"]["norm_share"] == pytest.approx(speedup(t, t_none))  # (T - T_none) / T, paired
    assert "| 39 +- 0.4 |" in text  # the paper's LayerNorm time beside ours
    # no demo data in this data_dir: the pipeline line says so instead of a number
    assert "Data pipeline: not measured" in text


def test_bench_tasks_times_the_data_pipeline_on_the_demo_data(smoke_data, tmp_path):
    r = run_script("scripts/bench_tasks.py", "--device", "cpu", "--scale", "0.02", "--rounds", "2", "--steps", "1",
                   "--warmup", "1", "--tasks", "retrieval", "--norms", "layernorm,rmsnorm", "--data-dir",
                   str(smoke_data), "--data-preset", "smoke", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    (js,) = (tmp_path / "out").glob("*.json")
    pipeline = json.loads(js.read_text())["results"][0]["pipeline"]
    assert pipeline["batches_per_sec"] > 0 and "smoke data" in pipeline["note"]
    assert "batches/s built by `Task.batches`" in next((tmp_path / "out").glob("*.md")).read_text()


def test_bench_tasks_in_lanes_times_a_task_again_with_its_own_overrides(smoke_data, tmp_path):
    """`make demo`'s timing: tasks side by side in one-thread processes, the Transformer a second time in its
    pre-norm placement (task:override), each result as one process would give it, in the order asked."""
    r = run_script("scripts/bench_tasks.py", "--device", "cpu", "--scale", "0.05", "--rounds", "2", "--steps", "1",
                   "--warmup", "1", "--preset", "smoke", "--threads", "1", "--jobs", "2", "--norms",
                   "layernorm,rmsnorm", "--impls", "fused", "--tasks",
                   "retrieval,transformer,transformer:task.model.norm_position=pre", "--data-dir", str(smoke_data),
                   "--data-preset", "smoke", "--out", str(tmp_path), "--stem", "timing", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "timing.json").read_text())
    assert data["lanes"] == 2 and data["machine"].endswith("1 threads")
    assert data["kernels"]["cpu"] == "fused C++ kernel"  # what the lanes ran, not the idle parent
    assert [(res["task"], res["variant"]) for res in data["results"]] == [
        ("retrieval", None), ("transformer", None), ("transformer", "pre-norm")]
    assert all("speedup_interval95" in res["rows"][1] for res in data["results"])
    text = (tmp_path / "timing.md").read_text()
    assert "## transformer (pre-norm):" in text and "timed in 2 processes side by side" in text
    bad = run_script("scripts/bench_tasks.py", "--tasks", "transfomer:task.model.norm_position=pre",
                     "--out", str(tmp_path))
    assert bad.returncode != 0 and "no task transfomer in configs/task/" in bad.stderr


def test_speedup_interval_separates_a_real_difference_from_noise():
    import random

    from rmsnorm.interleaved import describe, speedup, speedup_interval

    rng = random.Random(0)
    ref = [1.0 + rng.gauss(0, 0.02) for _ in range(10)]
    faster = [0.8 + rng.gauss(0, 0.02) for _ in range(10)]
    same = [1.0 + rng.gauss(0, 0.02) for _ in range(10)]
    lo, hi = speedup_interval(ref, faster)
    assert 0.1 < lo <= speedup(ref, faster) <= hi < 0.3
    assert "within noise" not in describe(speedup(ref, faster), (lo, hi))
    assert "within noise" in describe(speedup(ref, same), speedup_interval(ref, same))


def test_time_interleaved_runs_every_variant_each_round():
    import torch

    from rmsnorm.interleaved import time_interleaved

    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             torch.device("cpu"), rounds=3, steps_per_round=2, warmup_steps=1)
    assert calls.count("a") == calls.count("b") == 1 + 3 * 2
    assert all(len(v) == 3 for v in times.per_round.values())


def test_the_gpu_targets_are_read_from_the_measurements():
    # the render of `make bench --device cuda`, checked on made-up rounds: a norm at 90% of the copy's rate
    # meets the forward target, one at half of LayerNorm's speed misses the 'never slower' target
    from scripts.bench import Result, Roofline, gpu_targets, render_targets

    rows, d, size = 4096, 4096, 2
    nbytes = rows * d * size
    copy = [2 * nbytes / 3000e9] * 5  # a copy at 3000 GB/s

    def result(impl, fwd, bwd):
        return Result("bandwidth", "large rows", rows, d, impl,
                      {"fwd": [fwd] * 5, "bwd": [bwd] * 5, "fwd_bwd": [fwd + bwd] * 5})

    fast_fwd = 2 * nbytes / (0.9 * 3000e9)
    fast_bwd = 3 * nbytes / (0.7 * 3000e9)
    results = [result("layernorm (torch)", fast_fwd, fast_bwd), result("rms_norm (torch)", fast_fwd, fast_bwd),
               result("rmsnorm (ours)", fast_fwd, fast_bwd), result("l2norm (ours)", 2 * fast_fwd, 2 * fast_bwd)]
    targets = gpu_targets(results, {("bandwidth", "large rows", rows, d): Roofline(copy, copy)}, size)
    by = {(t["target"], t["where"].split(", ")[1]): t for t in targets}
    assert by[("forward >= 80% of copy", "rmsnorm (ours)")]["met"]
    assert by[("backward >= 65% of copy", "rmsnorm (ours)")]["met"]
    assert not by[("forward >= 80% of copy", "l2norm (ours)")]["met"]
    assert not by[("fwd+bwd <= 1.0x LayerNorm (upper end)", "l2norm (ours)")]["met"]
    assert by[("fwd+bwd <= 1.05x F.rms_norm (upper end)", "rmsnorm (ours)")]["met"]
    text = "\n".join(render_targets(targets, {}))
    assert f"{sum(t['met'] for t in targets)} of {len(targets)} met." in text and "**no**" in text



def test_the_cpu_targets_for_prmsnorm_are_read_from_the_measurements():
    # made-up rounds: pRMSNorm's backward at 70% of the copy's rate meets that target; its fwd+bwd 10% over
    # RMSNorm's in every round misses the 1.05x one; a shape under a million elements carries no target
    from scripts.bench import Result, Roofline, cpu_targets, render

    size, rounds = 4, 5

    def results_at(rows, d, prms_over_rms):
        nbytes = rows * d * size
        bwd = 3 * nbytes / (0.7 * 20e9)

        def result(impl, scale):
            jitter = [1.0, 1.01, 0.99, 1.02, 0.98]
            times = {m: [bwd * scale * j for j in jitter] for m in ("fwd", "bwd", "fwd_bwd")}
            return Result("t", "s", rows, d, impl, times)

        return [result("layernorm (torch)", 1.0), result("rmsnorm (ours)", 1.0),
                result("prmsnorm (ours, p=0.0625)", prms_over_rms)]

    copy = [2 * 4000 * 1024 * size / 20e9] * rounds  # 20 GB/s
    results = results_at(4000, 1024, 1.0) + results_at(64, 240, 1.1)
    rooflines = {("t", "s", 4000, 1024): Roofline(copy, copy), ("t", "s", 64, 240): Roofline(copy, copy)}
    targets = cpu_targets(results, rooflines, size)
    assert [t["where"].split(",")[0] for t in targets] == ["4000 x 1024"] * 2
    by = {t["target"]: t for t in targets}
    assert by["backward >= 60% of copy"]["met"] and by["backward >= 60% of copy"]["value"].startswith("70%")
    assert by["fwd+bwd <= 1.05x RMSNorm (ours) (upper end)"]["met"]
    slow = cpu_targets(results_at(4000, 1024, 1.1), rooflines, size)
    assert not next(t for t in slow if t["target"].startswith("fwd+bwd"))["met"]
    run = {"machine": "m", "command": "c", "produced_by": {"date": "d", "torch": "t", "commit": "abc"},
           "dtype": "float32", "threads": 2, "kernel_note": "", "rounds": rounds, "device": "cpu", "malloc": "m"}
    text = render(results, rooflines, run)
    assert "## The CPU targets (pRMSNorm)" in text and "2 of 2 met." in text


def test_a_registered_norm_is_benched_with_no_edit_to_the_bench():
    import torch

    from rmsnorm import NormInfo, register_norm, unregister_norm
    from scripts import bench

    register_norm(NormInfo("toy_rms", "Toy RMS", features=lambda d, eps, **_: torch.nn.RMSNorm(d, eps=eps)))
    try:
        impls = bench.implementations(16)
    finally:
        unregister_norm("toy_rms")
    assert "toy_rms (registered)" in impls and "batchnorm (registered)" not in impls
    x = torch.randn(4, 16)
    expected = torch.nn.functional.rms_norm(x, (16,), eps=1e-8)
    torch.testing.assert_close(impls["toy_rms (registered)"](x, None, None), expected)


@pytest.mark.parametrize("scale, steps", [(0.5, 1000), (1.0, 500)])
def test_bench_tasks_cifar10_epoch_is_the_papers_50k_images_at_the_timed_batch(scale, steps):
    """sec_per_epoch from the task's own unit (Cifar10Task.paper_time_unit) at the batch timed: at scale 0.5 a
    batch of 50, so an epoch of the paper's 50k images is 1000 steps, not the 500 of batch 100."""
    import torch

    from scripts.bench_tasks import bench_task

    res = bench_task("cifar10", torch.device("cpu"), scale, rounds=1, steps=1, warmup=1, norms=["none"],
                     overrides=["task.model.widths=[4,8]"])  # narrow: the unit depends on the batch only
    assert res["batch"].startswith(f"batch {round(100 * scale)} ")
    assert res["unit"] == "sec_per_epoch" and res["unit_steps"] == steps
    (row,) = res["rows"]
    assert row["sec_per_epoch"] == pytest.approx(row["sec_per_step"] * steps)


def test_added_fraction_is_the_ratio_of_added_times_with_an_interval_around_it():
    sys.path.insert(0, "scripts")
    import bench

    none = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]
    ln = [t + 0.4 for t in none]  # LayerNorm adds 0.4 s every round
    half = [t + 0.2 + 0.01 * (-1) ** i for i, t in enumerate(none)]  # a norm adding about half of it
    est, lo, hi = bench.added_fraction(none, ln, half)
    assert est == pytest.approx(0.5, abs=0.01) and lo <= est <= hi and lo > 0.4 and hi < 0.6
    assert bench.added_fraction(none, none, half) is None  # LayerNorm adds nothing: no fraction to give


def test_recurrent_rounds_grow_where_a_round_is_cheap_within_their_bounds(monkeypatch):
    import time

    import torch

    from scripts import bench

    cpu = torch.device("cpu")
    assert bench._rnn_rounds({"a": lambda: None}, 3, cpu) == bench.RNN_MAX_ROUNDS  # free calls: the cap
    monkeypatch.setattr(bench, "RNN_SECONDS_PER_SETTING", 0.01)
    slow = {"a": lambda: time.sleep(0.005), "b": lambda: time.sleep(0.005)}
    assert bench._rnn_rounds(slow, 3, cpu) == bench.RNN_MIN_ROUNDS  # a round over the budget: the floor
    assert bench._rnn_rounds(slow, 40, cpu) == 40  # never fewer than asked
