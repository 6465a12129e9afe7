"""A generated translation task for the demo, written as the hub's WMT parquet files are, so that it goes through
the code a paper-scale run uses (`datasets`, `Dataset.map`).

A made-up lexicon (pseudo-words built from syllables, sizes set by the preset) maps English to German words,
drawn with Zipfian frequencies so that, as in real text, many words are rare. The target is the word-by-word
translation with the verb moved to the end of its clause (one reordering the attention must learn); with
probability `compound` an adjective and its noun become one German compound word (a many-to-one mapping),
and up to `clauses` clauses are joined by "because" (German "weil"), each verb-final, so sentences grow.
"""

from __future__ import annotations

import random
from pathlib import Path

_EN_SYLLABLES = ["ba", "de", "ki", "lo", "mu", "ne", "po", "ra", "si", "tu", "va", "ze", "gor", "lin", "tam", "wer"]
_DE_SYLLABLES = ["ach", "bel", "dor", "ein", "fes", "gun", "hal", "ist", "kor", "lau", "mer", "nis", "ob", "pf",
                 "sch", "ter"]


def _words(rng: random.Random, syllables: list[str], n: int, used: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3)))
        if word not in used:
            used.add(word)
            out.append(word)
    return out


class Lexicon:
    """English -> German for each word class, with Zipfian sampling weights (rank^-zipf)."""

    CLASSES = ("subject", "verb", "adjective", "noun", "place")

    def __init__(self, sizes: dict[str, int], zipf: float, seed: int):
        rng = random.Random(seed)
        used_en, used_de = set(), set()
        self.pairs, self.weights = {}, {}
        for cls in self.CLASSES:
            n = sizes[cls]
            self.pairs[cls] = list(zip(_words(rng, _EN_SYLLABLES, n, used_en), _words(rng, _DE_SYLLABLES, n, used_de),
                                       strict=True))
            self.weights[cls] = [(rank + 1) ** -zipf for rank in range(n)]

    def draw(self, rng: random.Random, cls: str) -> tuple[str, str]:
        return rng.choices(self.pairs[cls], self.weights[cls])[0]


def make_clause(rng: random.Random, lex: Lexicon, compound: float) -> tuple[list[str], list[str]]:
    subj, verb, noun = lex.draw(rng, "subject"), lex.draw(rng, "verb"), lex.draw(rng, "noun")
    adjs = [lex.draw(rng, "adjective") for _ in range(rng.randint(0, 2))]
    place = lex.draw(rng, "place") if rng.random() < 0.5 else None
    en = ["the", subj[0], verb[0], "the", *(a[0] for a in adjs), noun[0]] + ([place[0]] if place else [])
    if adjs and rng.random() < compound:  # the last adjective and the noun as one German word
        de_object = [*(a[1] for a in adjs[:-1]), adjs[-1][1] + noun[1]]
    else:
        de_object = [*(a[1] for a in adjs), noun[1]]
    de = ["der", subj[1], "das", *de_object] + ([place[1]] if place else []) + [verb[1]]
    return en, de


def make_pair(rng: random.Random, lex: Lexicon, compound: float, clauses: int) -> dict:
    en, de = make_clause(rng, lex, compound)
    for _ in range(rng.randint(1, clauses) - 1):
        en2, de2 = make_clause(rng, lex, compound)
        en, de = en + ["because"] + en2, de + ["weil"] + de2
    return {"translation": {"en": " ".join(en) + ".", "de": " ".join(de) + "."}}


def write_synthetic(root: Path, gen, files: dict[str, str], seed: int = 1) -> None:
    """One parquet file per split of `gen.sizes` in the hub's WMT schema, as `files` names them; `gen` holds the
    difficulty knobs (lexicon sizes, zipf, compound, clauses)."""
    from experiments.translation.data import write_parquet

    lex = Lexicon(dict(gen.lexicon), gen.zipf, seed)
    rng = random.Random(seed)
    for split, n in gen.sizes.items():
        write_parquet([make_pair(rng, lex, gen.compound, gen.clauses) for _ in range(n)], Path(root) / files[split])
