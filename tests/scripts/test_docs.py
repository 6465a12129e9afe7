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


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_measured_figure_is_typed_into_prose(doc):
    """Measured figures live in generated blocks (scripts/readme.py), where they are rewritten from their results
    files; typed into a paragraph they drift (scripts/prose_figures.py says what is allowed)."""
    from scripts.prose_figures import prose_figures

    found = prose_figures(doc.read_text())
    assert not found, f"{doc.name}: measured figures typed into prose (line, kind, figure): {found[:8]}"


def test_the_prose_figure_check_catches_typed_figures_and_allows_sources_settings_and_blocks():
    from scripts.prose_figures import prose_figures

    typed = ("Our RMSNorm steps were 7.4% faster.\nThe demo took 13 min 22 s here.\nLayerNorm reached BLEU 33.7.\n"
             "The kernel ran at 20.1 GB/s, 12 ms a call, 46.8% error.\n")
    kinds = [kind for _, kind, _ in prose_figures(typed)]
    assert kinds.count("percent") == 2 and kinds.count("time") == 3 and kinds.count("score") == 2
    assert "bandwidth" in kinds and [n for n, _, _ in prose_figures(typed)][0] == 1
    allowed = ("RMSNorm is 24.7% faster than LayerNorm (Table 2).\n"
               "the paper's 7-40% speed-ups\n"
               "pRMSNorm at p = 6.25% of the features, `eps=1e-8`, a 95% interval.\n"
               "Each stage has a limit of 60 s. <!-- setting -->\n"
               "<!-- generated: demo results/demo/tables.md -->\nBLEU 33.7 in 13 min\n<!-- end generated -->\n")
    assert prose_figures(allowed) == []
    assert prose_figures(allowed + "and 5 s more\n")[0][0] == 8  # line numbers count the blocks' lines
