"""scripts/timings.py: the one record of how long the commands took, and the README's sentence from it."""

import sys

from tests.conftest import REPO, run_script

sys.path.insert(0, str(REPO / "scripts"))
import timings  # noqa: E402


def test_record_appends_a_stamped_row_and_the_newest_of_a_command_is_described(tmp_path):
    path = tmp_path / "timings.csv"
    timings.record("make demo", 545.5, {"data": 9.7, "sweeps": 498.3}, "after make install", path=path)
    timings.record("make test", 726.0, {}, "fresh clone", path=path)
    timings.record("make demo", 61.0, {"data": 1.0, "sweeps": 60.0}, "", path=path)
    rows = timings.read(path)
    assert [r["command"] for r in rows] == ["make demo", "make test", "make demo"]
    assert rows[0]["commit"] and rows[0]["machine"] and rows[0]["cores"] and "threads" not in rows[0]["machine"]
    newest = timings.newest("make demo", rows)
    assert newest["seconds"] == "61.0"
    text = timings.describe(rows[0])
    assert text.startswith("`make demo`: **9 min 6 s** (data 10 s, sweeps 8 min 18 s) on the ")
    assert "after make install" in text and timings.newest("make bench", rows) is None


def test_stamps_give_each_stage_the_time_since_the_one_before(tmp_path, monkeypatch):
    monkeypatch.setattr(timings, "FILE", tmp_path / "t.csv")
    assert timings.main(["record", "make demo", "--stamps", "start=100.0", "data=110.5", "sweeps=200.5"]) == 0
    (row,) = timings.read(tmp_path / "t.csv")
    assert row["stages"] == "data=10.5 sweeps=90.0" and row["seconds"] == "100.5"


def test_a_bad_stage_is_refused_in_one_line():
    r = run_script("scripts/timings.py", "record", "make demo", "--stages", "data")
    assert r.returncode == 2 and "name=seconds" in r.stderr
