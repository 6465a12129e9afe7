"""A small generated translation task for the demo, written in the WMT schema so the real loader reads it.

A made-up lexicon maps 48 English words to German ones; the target is the word-by-word translation with
the verb moved to the end, so the model must learn both the lexicon and one reordering (attention).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from experiments.core.atomic import save_text

SUBJECTS = {"the dog": "der hund", "the cat": "die katze", "a man": "ein mann", "the woman": "die frau",
            "my friend": "mein freund", "the child": "das kind", "a teacher": "ein lehrer", "the bird": "der vogel"}
VERBS = {"sees": "sieht", "likes": "mag", "finds": "findet", "buys": "kauft", "reads": "liest", "knows": "kennt",
         "needs": "braucht", "paints": "malt"}
ADJECTIVES = {"red": "rote", "big": "grosse", "old": "alte", "small": "kleine", "new": "neue", "green": "gruene"}
OBJECTS = {"house": "haus", "book": "buch", "car": "auto", "apple": "apfel", "ball": "ball", "garden": "garten",
           "letter": "brief", "picture": "bild"}
PLACES = {"today": "heute", "at home": "zu hause", "in the city": "in der stadt", "again": "wieder"}


def make_pair(rng: random.Random) -> dict:
    subj, verb = rng.choice(list(SUBJECTS)), rng.choice(list(VERBS))
    adjs = rng.sample(list(ADJECTIVES), rng.randint(0, 2))
    obj = rng.choice(list(OBJECTS))
    place = rng.choice([None, *PLACES])
    en = [subj, verb, "the", *adjs, obj] + ([place] if place else [])
    de = [SUBJECTS[subj], "das", *(ADJECTIVES[a] for a in adjs), OBJECTS[obj]]
    de += ([PLACES[place]] if place else []) + [VERBS[verb]]
    return {"translation": {"en": " ".join(en) + ".", "de": " ".join(de) + "."}}


def write_synthetic(root: Path, sizes: dict[str, int], files: dict[str, str], seed: int = 1) -> None:
    """One JSON-lines file per split, as `files` names them."""
    rng = random.Random(seed)
    for split, n in sizes.items():
        lines = "".join(json.dumps(make_pair(rng)) + "\n" for _ in range(n))
        save_text(lines, Path(root) / files[split])
