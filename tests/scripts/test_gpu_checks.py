"""scripts/gpu_checks.sh in its dry run: every stage on the CPU, rows written as they finish, a failing row
recorded while its stage goes on, and nothing finished lost to a kill."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_dry_run_passes_every_stage_in_at_most_eight_files_and_records_a_failing_row(tmp_path):
    out = tmp_path / "gpu"
    # a lent machine's copy of the tree has no .git: its commit comes in through the environment
    env = {**os.environ, "PYTHON": sys.executable, "RMSNORM_COMMIT": "0123456789abcdef", "RMSNORM_DIRTY": "0"}
    r = subprocess.run(["bash", "scripts/gpu_checks.sh", str(out), "--dry-run", "--rounds", "2"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"preflight.jsonl", "smoke.jsonl", "bench.jsonl", "bench-tasks.jsonl",
                                "stages.jsonl", "cuda-tests.xml", "gpu-checks.log"} <= set(files)
    stages = _rows(out / "stages.jsonl")
    assert [s["stage"] for s in stages] == ["preflight", "smoke", "tests", "bench", "bench-tasks"]
    assert all(s["exit"] == 0 for s in stages)
    bench = _rows(out / "bench.jsonl")
    failed = [i for i, row in enumerate(bench) if row["status"] == "failed"]
    assert failed and "ZeroDivisionError" in bench[failed[0]]["error"]
    assert bench[failed[0] + 1]["status"] == "ok" and bench[-1]["row"] == "stage end"  # the stage went on
    assert any(row["status"] == "skipped: no GPU" for row in bench)
    assert all(row["status"] == "ok" for row in _rows(out / "smoke.jsonl"))
    stamp = next(row for row in _rows(out / "preflight.jsonl") if row["row"] == "stamp")["stamp"]
    assert stamp["commit"] == "0123456789abcdef" and stamp["dirty"] is False
    assert "<testsuite" in (out / "cuda-tests.xml").read_text()
    tasks = [row for row in _rows(out / "bench-tasks.jsonl") if row["row"].startswith("steps:")]
    assert len(tasks) == 5 and all(len(row["rows"][0]["rounds"]) == 2 for row in tasks)  # --rounds reached it


def test_a_stage_killed_mid_way_keeps_every_finished_row(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.Popen([sys.executable, "scripts/gpu_checks.py", "bench-tasks", "--out", str(out), "--dry-run",
                             "--rounds", "2"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path, deadline = out / "bench-tasks.jsonl", time.time() + 120
    while time.time() < deadline and not (path.exists() and len(path.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    rows = _rows(path)  # every line whole and readable
    assert rows[0]["row"] == "stage start" and rows[1]["row"].startswith("steps: ") and rows[1]["status"] == "ok"
    assert rows[-1]["row"] != "stage end"  # it was killed before the end
