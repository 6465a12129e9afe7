"""README.md and docs/ point only at what exists: every relative link, every repository path they name, and no
document a user does not have (the project's internal notes) or an issue number."""

import re

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:rmsnorm|experiments|scripts|configs|results|tests|docs)/[\w./-]+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_and_named_file_exists(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name} links to {target}, which does not exist"
    for path in PATH.findall(text):
        path = path.split("::")[0].rstrip(".")
        assert (REPO / path).exists(), f"{doc.name} names {path}, which does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_internal_notes_or_issue_numbers(doc):
    text = doc.read_text()
    assert "PAPER.md" not in text and "DESIGN.md" not in text
    assert not re.search(r"\bissue \d+", text, re.I)


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "make demo" in text[:1500] and "make test" in text[:1500]
    assert "<!-- generated: glance results -->" in text  # the results at a glance, from the results files


def test_no_source_or_config_file_is_ignored_by_git():
    """A new module or config under a folder whose name an ignore rule matches (data/, outputs/) would work in
    the checkout that wrote it and be missing from every clone."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(REPO)) for d in ("rmsnorm", "experiments", "configs", "scripts", "tests")
             for p in (REPO / d).rglob("*") if p.suffix in (".py", ".yaml", ".csv", ".sh", ".cpp")
             and "__pycache__" not in p.parts]
    r = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=REPO, capture_output=True, text=True)
    assert r.stdout.strip() == "", f"ignored by .gitignore, so missing from a clone:\n{r.stdout}"
