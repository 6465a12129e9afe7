"""The DeepMind Q&A `.question` files (Hermann et al. 2015), as the CNN and Daily Mail archives hold them:

    URL
    <blank>
    the anonymised story, tokenised, on one line
    <blank>
    the question, with @placeholder
    <blank>
    the answer, an @entityN
    <blank>
    @entity0:Name
    ...

A file that breaks this layout, or whose answer is not an entity of its story, is skipped with its path and
the problem in the log and counted; a folder with no files is an error. Nothing is read half.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from experiments.core.errors import MissingData

log = logging.getLogger(__name__)

SPLITS = {"train": "training", "valid": "validation", "test": "test"}


@dataclass(frozen=True)
class Question:
    story: list[str]
    question: list[str]
    answer: str


class BadQuestionFile(ValueError):
    pass


def parse_question(text: str) -> Question:
    """One file's story, question and answer; BadQuestionFile saying what is wrong."""
    blocks = text.replace("\r\n", "\n").split("\n\n")
    if len(blocks) < 4:
        raise BadQuestionFile(f"expected URL, story, question and answer blocks separated by blank lines, "
                              f"found {len(blocks)} block(s)")
    story, question, answer = (blocks[i].strip() for i in (1, 2, 3))
    if not story or not question or not answer:
        raise BadQuestionFile("the story, question or answer block is empty")
    if "@placeholder" not in question.split():
        raise BadQuestionFile("the question has no @placeholder")
    if not answer.startswith("@entity") or len(answer.split()) != 1:
        raise BadQuestionFile(f"the answer {answer[:40]!r} is not one @entityN")
    words = story.split()
    if answer not in words:
        raise BadQuestionFile(f"the answer {answer} does not occur in the story")
    return Question(words, question.split(), answer)


def read_split(folder: Path, limit: int | None = None) -> tuple[list[Question], int]:
    """The questions of one split folder (sorted by file name) and how many files were skipped."""
    folder = Path(folder)
    files = sorted(folder.glob("*.question")) if folder.is_dir() else []
    if not files:
        raise MissingData(f"no .question files in {folder}")
    questions, skipped = [], 0
    for path in files[:limit]:
        try:
            questions.append(parse_question(path.read_text(encoding="utf-8")))
        except (BadQuestionFile, UnicodeDecodeError) as exc:
            skipped += 1
            if skipped <= 10:
                log.warning("skipped %s: %s", path, exc)
    if skipped:
        log.warning("%s: skipped %d of %d files (the first ten are named above)", folder, skipped, len(files[:limit]))
    if not questions:
        raise MissingData(f"none of the {len(files[:limit])} files in {folder} is a valid .question file")
    return questions, skipped


def format_question(url: str, story: list[str], question: list[str], answer: str, names: dict[str, str]) -> str:
    """A file's text in the layout above (the demo's generator and the tests' fixtures write with it)."""
    entities = "\n".join(f"{e}:{n}" for e, n in names.items())
    return f"{url}\n\n{' '.join(story)}\n\n{' '.join(question)}\n\n{answer}\n\n{entities}\n"
