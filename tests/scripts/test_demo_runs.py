"""scripts/demo_runs.sh: every task x seed as one sweep over the norms configs/ declare, read once."""

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


def test_demo_runs_sweeps_each_task_and_seed_over_its_norms(tmp_path):
    # a stand-in interpreter: `tasks.py table` answers two tasks, train.py records its arguments; one sweep fails
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\n"
                    'if [ "$1" = scripts/tasks.py ]; then printf "alpha a,b\\ntransformer n,r\\n"; exit 0; fi\n'
                    f'echo "$@" >> {tmp_path}/calls\n'
                    'case "$*" in *seed=1*task.model.norm_position=pre*) exit 3;; esac\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    r = subprocess.run(["bash", "scripts/demo_runs.sh", str(out)], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PY": str(fake), "JOBS": "2", "SEEDS": "0 1"}, timeout=60)
    assert r.returncode != 0  # the failed sweep is reported in the exit status, the others still ran
    assert "demo: 6 sweeps in 2 lanes" in r.stdout and "transformer-pre seed 1: FAILED" in r.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 6
    assert sum("task=alpha norm=a,b" in c for c in calls) == 2
    assert sum("task=transformer norm=n,r" in c and "norm_position=pre" in c for c in calls) == 2
    assert all(f"hydra.sweep.dir={out}/" in c for c in calls)
