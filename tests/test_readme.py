"""Every figure the README quotes from results/ sits in a generated block that matches its file."""

import re

from tests.conftest import REPO, run_script


def test_readme_blocks_match_their_results_files():
    r = run_script("scripts/readme.py", "--check")
    assert r.returncode == 0, r.stderr


def test_readme_blocks_name_existing_files_and_the_check_catches_a_drift(tmp_path):
    text = (REPO / "README.md").read_text()
    sources = re.findall(r"<!-- generated: \S+ (\S+) -->", text)
    assert len(sources) >= 3 and all((REPO / s).exists() for s in sources)
    drifted = tmp_path / "README.md"
    drifted.write_text(text.replace("| 4000 x 1024 (translation) |", "| 4000 x 1024 (translation) | 0.01 |", 1))
    r = run_script("scripts/readme.py", "--check", "--readme", str(drifted))
    assert r.returncode == 1 and "differ" in r.stderr
