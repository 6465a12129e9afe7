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
