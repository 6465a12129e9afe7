"""Reading-comprehension data as training reads it: a vocabulary from the training stories, the paper's
"top-k" passages, and every split as flat id tensors.

"top4" (Cooijmans et al. 2016, appendix, which the LayerNorm and RMSNorm papers follow): "we use only the 4
most relevant sentences from the description, as identified by a string matching procedure"; the procedure
itself is not published. Ours: split the story at sentence ends (. ! ?), score each sentence by how many
distinct question words it contains (lower-cased, @placeholder and one- or two-character tokens left out),
keep the k best (earlier first on ties) in story order. Like theirs, it sometimes drops the answer: the
share of such questions is logged and kept in the data facts. `top_sentences: null` keeps whole stories.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.core.atomic import save_torch
from experiments.core.data.batching import Ragged
from experiments.core.errors import MissingData
from experiments.reading.questions import Question

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]
FORMAT = "r2"  # the cached splits' layout (ragged passages, questions); in the file name: an older cache is rebuilt
SENTENCE_ENDS = {".", "!", "?"}


def select_sentences(story: list[str], question: list[str], k: int | None) -> list[str]:
    """The story cut to its k sentences sharing most words with the question, in story order."""
    if k is None:
        return story
    sentences, current = [], []
    for word in story:
        current.append(word)
        if word in SENTENCE_ENDS:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    if len(sentences) <= k:
        return story
    keys = {w.lower() for w in question if w != "@placeholder" and len(w) > 2}
    scores = [len(keys & {w.lower() for w in s}) for s in sentences]
    best = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))[:k]
    return [w for i in sorted(best) for w in sentences[i]]


def build_vocabulary(questions: list[Question], min_count: int = 2) -> list[str]:
    """Lower-cased words of the training stories and questions seen at least min_count times (upstream keeps
    words seen more than once), every entity marker seen at all, and @placeholder."""
    counts = Counter(w.lower() for q in questions for w in (*q.story, *q.question))
    entities = sorted((w for w in counts if w.startswith("@entity")), key=lambda w: int(w[7:] or 0))
    words = sorted(w for w, n in counts.items() if n >= min_count and not w.startswith("@entity")
                   and w != "@placeholder")
    return [*SPECIALS, "@placeholder", *entities, *words]


@dataclass
class Encoded:
    """One split: passages and questions as ragged ids, answers as ids."""

    passages: Ragged
    questions: Ragged
    answers: torch.Tensor

    def __len__(self) -> int:
        return len(self.answers)

    def head(self, n: int) -> Encoded:
        return Encoded(self.passages.head(n), self.questions.head(n), self.answers[:n])

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.passages[i], self.questions[i], int(self.answers[i])

    def state(self) -> dict:
        return {"passages": self.passages.state(), "questions": self.questions.state(), "answers": self.answers}

    @classmethod
    def from_state(cls, state: dict) -> Encoded:
        return cls(Ragged.from_state(state["passages"]), Ragged.from_state(state["questions"]), state["answers"])


def encode(questions: list[Question], vocab: list[str], top: int | None) -> tuple[Encoded, int]:
    """The split as ids (unknown words -> UNK) and how many passages lost their answer to the cut."""
    index = {w: i for i, w in enumerate(vocab)}
    passages, qs, answers, lost = [], [], [], 0
    for q in questions:
        passage = select_sentences(q.story, q.question, top)
        lost += q.answer not in passage
        passages.append([index.get(w.lower(), UNK) for w in passage])
        qs.append([index.get(w.lower(), UNK) for w in q.question])
        answers.append(index.get(q.answer.lower(), UNK))
    return Encoded(Ragged.from_lists(passages), Ragged.from_lists(qs), torch.tensor(answers, dtype=torch.int64)), lost


def cache_name(split: str, top: int | None, vocab: list[str]) -> str:
    key = hashlib.sha1("\n".join(vocab).encode()).hexdigest()[:12]
    return f"{split}.{'full' if top is None else f'top{top}'}.{key}.{FORMAT}.pt"


def save_split(root: Path, split: str, top: int | None, vocab: list[str], enc: Encoded, facts: dict) -> None:
    save_torch({"encoded": enc.state(), "facts": facts}, Path(root) / cache_name(split, top, vocab))


def load_split(root: Path, split: str, top: int | None, vocab: list[str], make_target: str) -> tuple[Encoded, dict]:
    path = Path(root) / cache_name(split, top, vocab)
    if not path.exists():
        raise MissingData(f"the {split} split is not prepared for top_sentences={top} ({path}); run `{make_target}`")
    saved = torch.load(path, weights_only=False)
    return Encoded.from_state(saved["encoded"]), saved["facts"]


def most_frequent_entity_error(enc: Encoded, entity_ids: torch.Tensor) -> float:
    """The error of answering with the entity the passage mentions most (ties: the lowest id)."""
    is_entity = torch.zeros(int(max(enc.passages.flat.max(), entity_ids.max())) + 1, dtype=torch.bool)
    is_entity[entity_ids] = True
    wrong = 0
    for i in range(len(enc)):
        passage, _, answer = enc.item(i)
        ents = passage[is_entity[passage.long()]].long()
        guess = int(torch.bincount(ents).argmax()) if len(ents) else -1
        wrong += guess != answer
    return wrong / max(len(enc), 1)
