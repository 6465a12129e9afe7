"""scripts/demo_runs.py: every task x seed as one sweep over the norms configs/ declare, sweep after sweep in
long-lived lanes; a failed sweep or a dead lane loses nothing else."""

import json
import shlex
import subprocess

from tests.conftest import REPO, run_script


def test_tasks_table_lists_every_task_with_its_norms():
    from experiments.core.training.config import compose_config

    r = run_script("scripts/tasks.py", "table")
    assert r.returncode == 0, r.stderr
    rows = dict(line.split(" ") for line in r.stdout.splitlines())
    assert sorted(rows) == sorted(p.stem for p in (REPO / "configs" / "task").glob("*.yaml"))
    for task, norms in rows.items():
        assert norms.split(",") == list(compose_config([f"task={task}"]).task.norms), task


FAKE_TRAIN = '''
import os, sys

def main():
    args = sys.argv[1:]
    with open({calls!r}, "a") as f:
        f.write(f"{{os.getpid()}} " + " ".join(args) + "\\n")
    print("printed by the sweep")
    os.write(2, b"written by C code to fd 2\\n")
    if "seed=1" in args and "task.model.norm_position=pre" in args:
        sys.exit(3)  # a sweep whose run failed
    if "task=retrieval" in args and "seed=0" in args:
        os._exit(9)  # a lane killed in the middle of a sweep
'''


def test_demo_runs_every_sweep_in_lanes_and_reports_failures_without_losing_others(tmp_path):
    from experiments.core.training.config import compose_config

    calls = tmp_path / "calls"
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN.format(calls=str(calls)))
    # the arguments `make demo` passes (read from `make -n`), then this test's own
    dry = subprocess.run(["make", "-n", "demo", "DEMO_SEEDS=0 1", "DEMO_PAIR_SEEDS="], cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    line = next(x for x in dry.splitlines() if "scripts/demo_runs.py" in x)
    made = shlex.split(line.split("scripts/demo_runs.py", 1)[1].split("||")[0])
    assert made[0] == "multirun/demo" and "--seeds" in made and "--pair-seeds" in made and "logger=none" in made
    out = tmp_path / "out"
    r = run_script("scripts/demo_runs.py", str(out), *made[1:], "--tasks", "retrieval,transformer",
                   "--script", str(script), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # failures are in the exit status, the others still ran
    assert "demo: 6 sweeps in 2 lanes" in r.stdout
    assert "transformer-pre seed 1: FAILED after" in r.stdout
    assert "retrieval seed 0: FAILED, its lane died (exit code 9)" in r.stdout
    for done in ("transformer-pre seed 0", "transformer seed 0", "transformer seed 1", "retrieval seed 1"):
        assert f"{done}: done in" in r.stdout
    lines = calls.read_text().splitlines()
    assert len(lines) == 6
    pids = {line.split()[0] for line in lines}
    assert 2 <= len(pids) <= 3  # sweeps share their lane's process; the dead lane's queue went on in a new one
    norms = {t: ",".join(compose_config([f"task={t}"]).task.norms) for t in ("retrieval", "transformer")}
    assert sum(f"task=transformer norm={norms['transformer']}" in c and "norm_position=pre" in c
               for c in lines) == 2
    assert sum(f"task=retrieval norm={norms['retrieval']}" in c for c in lines) == 2
    assert all("preset=demo" in c and "logger=none" in c and f"hydra.sweep.dir={out}/" in c for c in lines)
    log = (out / "logs" / "transformer-s1.log").read_text()
    assert "printed by the sweep" in log and "written by C code to fd 2" in log
    assert "printed by the sweep" not in r.stdout  # each sweep's output in its own log, not the lane's


def test_a_sweep_run_after_another_in_one_lane_gives_what_a_fresh_process_gives(smoke_data, tmp_path):
    """Hydra and the training code entered a second time in one process: the same metrics as a new process."""
    from experiments.core.training.config import compose_config

    norms = ",".join(compose_config(["task=retrieval"]).task.norms)
    lane = tmp_path / "lane"
    r = run_script("scripts/demo_runs.py", str(lane), "--jobs", "1", "--seeds", "0,1", "--tasks", "retrieval",
                   "--preset", "smoke", f"data_dir={smoke_data}", "logger=none",
                   timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    fresh = tmp_path / "fresh"
    r = run_script("scripts/train.py", "-m", "task=retrieval", f"norm={norms}", "preset=smoke", "seed=1",
                   f"data_dir={smoke_data}", "logger=none", "train.progress=false", f"hydra.sweep.dir={fresh}",
                   timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    def metrics(folder):
        out = {}
        for summary in sorted(folder.glob("*/summary.json")):
            data = json.loads(summary.read_text())
            out[summary.parent.name] = {k: v for k, v in data["metrics"].items() if "sec" not in k}
        return out

    assert metrics(lane / "retrieval" / "s1") == metrics(fresh) != {}
    assert len(metrics(lane / "retrieval" / "s0")) == len(norms.split(","))


def test_pair_seeds_run_the_compared_pair_only_and_skip_tasks_without_it(tmp_path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("demo_runs_plan", REPO / "scripts" / "demo_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    table = {"cifar10": ["none", "layernorm", "rmsnorm", "prmsnorm"], "other": ["none", "batchnorm"]}
    sweeps = module.plan(table, [0, 1, 2], tmp_path, "demo", [], pair_seeds=[2, 3, 4],
                         pair=("layernorm", "rmsnorm"))
    runs = [(s.name, s.seed, next(a for a in s.argv if a.startswith("norm="))) for s in sweeps]
    assert runs == [("cifar10", 0, "norm=none,layernorm,rmsnorm,prmsnorm"),
                    ("cifar10", 1, "norm=none,layernorm,rmsnorm,prmsnorm"),
                    ("cifar10", 2, "norm=none,layernorm,rmsnorm,prmsnorm"),
                    ("cifar10", 3, "norm=layernorm,rmsnorm"), ("cifar10", 4, "norm=layernorm,rmsnorm"),
                    ("other", 0, "norm=none,batchnorm"), ("other", 1, "norm=none,batchnorm"),
                    ("other", 2, "norm=none,batchnorm")]
    assert len({s.log for s in sweeps}) == len(sweeps)  # every sweep its own log
