"""Every figure README.md and docs/ quote from results/ sits in a generated block that matches its file."""

import re

from tests.conftest import REPO, run_script


def test_readme_blocks_match_their_results_files():
    r = run_script("scripts/readme.py", "--check")
    assert r.returncode == 0, r.stderr


def test_readme_blocks_name_existing_files_and_the_check_catches_a_drift(tmp_path):
    docs = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    sources = [s for doc in docs for s in re.findall(r"<!-- generated: \S+ (\S+)(?: \S+)? -->", doc.read_text())]
    assert len(sources) >= 8 and all((REPO / s).exists() for s in sources)
    text = (REPO / "docs" / "speed.md").read_text()
    drifted = tmp_path / "speed.md"
    drifted.write_text(text.replace("| 4000 x 1024 (translation) |", "| 4000 x 1024 (translation) | 0.01 |", 1))
    r = run_script("scripts/readme.py", "--check", "--readme", str(drifted))
    assert r.returncode == 1 and "differ" in r.stderr


def test_every_row_of_the_bad_input_table_names_tests_that_exist():
    text = (REPO / "docs" / "running.md").read_text()
    table = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py")),
                             re.MULTILINE))
    assert len(rows) >= 15
    for row in rows:
        names = re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])
        assert names, f"a row without a test: {row[:80]}"
        assert set(names) <= defined, f"no such test: {set(names) - defined}"
