"""Every artefact says which run made it, and no result is ever taken for another run's: a resume into a
folder of another config is refused at start-up, a damaged checkpoint or a value of the wrong type ends in one
line, and the report never averages runs whose settings differ."""

import json
import shutil

import pytest
import torch

from experiments.core.errors import UserError
from experiments.core.records import read_header, read_metrics
from experiments.core.reporting.report import build_tables, render_markdown
from experiments.core.training.run import run_training
from tests.conftest import compose_cfg, run_script, tiny_cifar, tiny_cifar_cli


@pytest.fixture(scope="module")
def rms_run(cifar_dir, tmp_path_factory):
    """A finished tiny RMSNorm run: its folder is copied by each test that reuses it."""
    run_dir = tmp_path_factory.mktemp("rms") / "run"
    summary = run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=rmsnorm")), run_dir)
    return run_dir, summary


def _copy(rms_run, tmp_path, crashed: bool = False):
    run_dir = tmp_path / "run"
    shutil.copytree(rms_run[0], run_dir)
    if crashed:  # killed after its last checkpoint, before the summary
        (run_dir / "summary.json").unlink()
    return run_dir


def test_every_artefact_names_the_run_and_the_code(rms_run):
    run_dir, summary = rms_run
    assert len(summary["config_hash"]) == 16 and summary["commit"]
    assert summary["identity"]["norm"] == "rmsnorm" and summary["identity"]["torch"] == torch.__version__
    folder = json.loads((run_dir / "identity.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)["identity"]
    header = read_header(run_dir)
    assert folder["config_hash"] == checkpoint["config_hash"] == header["config_hash"] == summary["config_hash"]
    assert all("step" in r for r in read_metrics(run_dir))  # the header is no curve point
    assert (run_dir / "checkpoint.prev.pt").exists()  # the one before the last is kept


def test_resuming_another_norms_folder_is_refused_in_one_line(rms_run, cifar_dir, tmp_path):
    run_dir = _copy(rms_run, tmp_path)
    r = run_script("scripts/train.py", "task=cifar10", *tiny_cifar_cli(cifar_dir, "norm=layernorm", "resume=true"),
                   f"hydra.run.dir={run_dir}")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "norm: rmsnorm -> layernorm" in out and "Traceback" not in out
    assert json.loads((run_dir / "summary.json").read_text())["norm"] == "rmsnorm"  # nothing written over it


@pytest.mark.parametrize("override, named", [
    ("norm=layernorm", "norm: rmsnorm -> layernorm"),
    ("task=translation", "task: cifar10 -> translation"),
    ("preset=smoke", "preset: paper -> smoke"),
    ("seed=1", "seed: 0 -> 1"),
    ("task.model.widths=[4,16]", "task.model.widths: [4, 8] -> [4, 16]"),
])
@pytest.mark.parametrize("crashed", [False, True])
def test_a_resume_with_another_identity_is_refused(rms_run, cifar_dir, tmp_path, override, named, crashed):
    run_dir = _copy(rms_run, tmp_path, crashed)
    overrides = [o for o in tiny_cifar(cifar_dir, "norm=rmsnorm", "resume=true")
                 if not (override.startswith("task=") and o.startswith(("task=", "task.model")))]
    with pytest.raises(UserError, match="written by another run") as err:
        run_training(compose_cfg([*overrides, override]), run_dir)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert "another hydra.run.dir" in str(err.value) and "resume_anyway=true" in str(err.value)


def test_an_old_folder_without_identity_is_checked_against_its_checkpoint(rms_run, cifar_dir, tmp_path):
    run_dir = _copy(rms_run, tmp_path, crashed=True)
    (run_dir / "identity.json").unlink()
    with pytest.raises(UserError, match="checkpoint.pt was written by another run \\(norm: rmsnorm -> layernorm"):
        run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=layernorm", "resume=true")), run_dir)


def test_raising_only_max_steps_continues_the_run(cifar_dir, tmp_path):
    # the schedule set apart from the run's length (CIFAR-10's follows train.epochs unless told otherwise)
    fixed = tiny_cifar(cifar_dir, "norm=rmsnorm", "task.schedule_epochs=3", "train.epochs=null")
    first = run_training(compose_cfg([*fixed, "train.max_steps=4"]), tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    summary = run_training(compose_cfg([*fixed, "train.max_steps=7", "resume=true"]), tmp_path / "run")
    assert first["steps"] == 4 and summary["steps"] == 7 and summary["config_hash"] == first["config_hash"]


def test_resume_anyway_continues_from_another_runs_checkpoint(rms_run, cifar_dir, tmp_path):
    run_dir = _copy(rms_run, tmp_path, crashed=True)
    summary = run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=rmsnorm", "resume=true", "resume_anyway=true",
                                                  "seed=3")), run_dir)
    assert summary["seed"] == 3 and summary["steps"] == rms_run[1]["steps"]


def test_a_truncated_checkpoint_ends_in_one_line_naming_the_kept_one(rms_run, cifar_dir, tmp_path):
    run_dir = _copy(rms_run, tmp_path, crashed=True)
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    cfg = compose_cfg(tiny_cifar(cifar_dir, "norm=rmsnorm", "resume=true"))
    with pytest.raises(UserError, match=r"checkpoint.pt cannot be read, it is truncated or corrupt") as err:
        run_training(cfg, run_dir)
    assert "checkpoint.prev.pt, is kept: rename it to checkpoint.pt" in str(err.value)
    assert "\n" not in str(err.value)
    (run_dir / "checkpoint.prev.pt").unlink()
    with pytest.raises(UserError, match=r"or delete it to start afresh, or use another hydra.run.dir"):
        run_training(cfg, run_dir)


def test_a_checkpoint_missing_between_the_two_renames_resumes_from_the_previous_one(rms_run, cifar_dir, tmp_path):
    run_dir = _copy(rms_run, tmp_path, crashed=True)
    (run_dir / "checkpoint.pt").unlink()
    summary = run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=rmsnorm", "resume=true")), run_dir)
    assert summary["steps"] == rms_run[1]["steps"]
    for key, value in rms_run[1]["metrics"].items():
        assert summary["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("override, message", [
    ("seed=abc", "seed=abc: must be a whole number"),
    ("resume=maybe", "resume=maybe: must be true or false"),
    ("train.epochs=ten", "train.epochs=ten: "),
    ("train.eval_every=often", "train.eval_every=often: "),
])
def test_values_of_the_wrong_type_end_in_one_line(tmp_path, override, message):
    cfg = compose_cfg(tiny_cifar(tmp_path / "no-data", "norm=rmsnorm", override))
    with pytest.raises(UserError, match=message) as err:
        run_training(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)


def test_a_wrong_seed_on_the_command_line_ends_in_one_line(tmp_path):
    r = run_script("scripts/train.py", "task=cifar10", *tiny_cifar_cli(tmp_path / "no-data", "seed=abc"),
                   f"hydra.run.dir={tmp_path / 'run'}")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "seed=abc: must be a whole number" in out and "Traceback" not in out
    assert json.loads((tmp_path / "run" / "error.json").read_text())["user_error"] is True


def _fake(norm, seed, hidden, sec, commit="abc"):
    return {"task": "cifar10", "norm": norm, "seed": seed, "preset": "paper", "device": "cpu", "steps": 10,
            "primary_metric": "test_error", "metrics": {"test_error": 0.1 * hidden}, "commit": commit,
            "timing": {"sec_per_1k_steps": sec},
            "config": {"seed": seed, "task": {"name": "cifar10", "model": {"hidden": hidden}},
                       "norm": {"name": norm}, "train": {"log_every": seed + 1}}}


def test_the_report_never_averages_runs_with_different_settings():
    runs = [_fake("layernorm", 0, 1, 40.0), _fake("layernorm", 1, 1, 42.0),  # seeds and a log interval differ
            _fake("rmsnorm", 0, 1, 30.0), _fake("rmsnorm", 0, 2, 31.0, commit="def")]  # a width differs
    (table,) = build_tables(runs)
    labels = [r.label for r in table.rows]
    assert labels[0] == "layernorm" and table.rows[0].seeds == 2
    assert len(labels) == 3 and all(label.startswith("rmsnorm [") for label in labels[1:])
    assert sorted(round(r.metric[0], 6) for r in table.rows[1:]) == [0.1, 0.2]
    text = render_markdown(table, {})
    assert "commit: abc, def" in text and "task.model.hidden: 1 -> 2" in text


def test_written_results_do_not_mark_the_code_as_changed(tmp_path):
    import subprocess

    from experiments.core.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tables.md").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    (tmp_path / "results" / "tables.md").write_text("new")  # what make demo writes before its report
    assert git_state.__wrapped__(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2")
    assert git_state.__wrapped__(tmp_path)["dirty"] is True
