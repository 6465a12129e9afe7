"""Generated data sets are regenerated, with what was derived from them, when their settings change or a file
is missing, and left alone otherwise."""

from experiments.core.data.generated import ensure_generated


def test_a_generated_set_is_rewritten_only_when_its_settings_or_files_change(tmp_path):
    writes = []

    def write():
        writes.append(1)
        (tmp_path / "data.txt").write_text("x")

    assert ensure_generated(tmp_path, {"size": 1}, write, complete=False)
    (tmp_path / "derived.model").write_text("from the old set")
    assert not ensure_generated(tmp_path, {"size": 1}, write, complete=True)  # same settings, files there
    assert (tmp_path / "derived.model").exists()
    assert ensure_generated(tmp_path, {"size": 2}, write, complete=True)  # new settings: rewritten
    assert not (tmp_path / "derived.model").exists()  # and what came from the old set is gone
    assert ensure_generated(tmp_path, {"size": 2}, write, complete=False)  # a file missing: rewritten
    assert len(writes) == 3 and (tmp_path / "data.txt").exists()
