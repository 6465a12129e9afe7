"""A generated cloze set for the demo, written as real `.question` files so the real reader reads it.

Each story states four to six facts `@entityA <relation> @entityB ...`, each with its own relation word, among
filler sentences; the question is one fact with one entity replaced by @placeholder. Entities are
anonymised afresh per story, as in the CNN corpus, so only the story can tell the answer, and every entity
of a story occurs about equally often (the most-frequent-entity baseline stays weak).
"""

from __future__ import annotations

import random
from pathlib import Path

from experiments.core.atomic import save_text
from experiments.reading.questions import SPLITS, format_question

RELATIONS = ["met", "hired", "sued", "praised", "visited", "thanked", "called", "helped", "warned", "followed"]
PLACES = ["in paris", "on monday", "at the club", "after the game", "in court", "at home"]
FILLERS = [["officials", "said", "nothing", "."], ["the", "weather", "was", "cold", "."],
           ["it", "was", "a", "long", "day", "."], ["police", "are", "still", "searching", "."],
           ["the", "report", "came", "out", "later", "."], ["many", "people", "watched", "."]]
ENTITIES = 12


def make_story(rng: random.Random) -> tuple[list[str], list[str], str, dict[str, str]]:
    n_facts = rng.randint(4, 6)
    ids = rng.sample(range(ENTITIES), rng.randint(4, 6))
    names = {f"@entity{i}": f"name{i}" for i in ids}
    relations = rng.sample(RELATIONS, n_facts)
    facts = []
    for rel in relations:
        a, b = rng.sample(ids, 2)
        facts.append((f"@entity{a}", rel, f"@entity{b}"))
    sentences = [[a, rel, b, *rng.choice(PLACES).split(), "."] for a, rel, b in facts]
    sentences += rng.sample(FILLERS, 2)
    rng.shuffle(sentences)
    a, rel, b = rng.choice(facts)
    if rng.random() < 0.5:
        question, answer = ["@placeholder", rel, b], a
    else:
        question, answer = [a, rel, "@placeholder"], b
    return [w for s in sentences for w in s], question, answer, names


def write_cloze_folder(root: Path, sizes: dict[str, int], seed: int = 1) -> None:
    """root/questions/{training,validation,test}/NNNNNN.question for the splits in `sizes` (train/valid/test)."""
    rng = random.Random(seed)
    for split, n in sizes.items():
        folder = Path(root) / "questions" / SPLITS[split]
        for i in range(n):
            story, question, answer, names = make_story(rng)
            text = format_question(f"http://demo/{split}/{i}", story, question, answer, names)
            save_text(text, folder / f"{i:06d}.question")
