"""The reading-comprehension task: DeepMind Q&A cloze questions (CNN, or Daily Mail with
`task.corpus=dailymail`), the bidirectional Attentive Reader, Adam with gradient clipping (upstream's rule under
preset=paper), entities re-permuted per training minibatch as upstream, validation and test error, the best
validation kept."""

from __future__ import annotations

import contextlib
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from experiments.core.data.batching import bucketed_batches, count_batches
from experiments.core.data.download import Offline, is_network_error, offline_message
from experiments.core.data.vocabulary import load_vocabulary, save_vocabulary
from experiments.core.errors import MissingData, UserError
from experiments.core.training.adam import torch_adam
from experiments.core.training.seeding import epoch_generator
from experiments.core.training.task import Task, TaskConfig
from experiments.reading import data as D
from experiments.reading.model import AttentiveReader, batch_statistics
from experiments.reading.questions import SPLITS, read_split
from experiments.reading.synthetic import write_cloze_folder

log = logging.getLogger(__name__)

DMQA_PAGE = "https://cs.nyu.edu/~kcho/DMQA/"
# the questions archives of the DeepMind Q&A page, hosted on Google Drive (the ids ParlAI and others use)
DRIVE_IDS = {"cnn": "0BwmD_VLjROrfTTljRDVZMFJnVWM", "dailymail": "0BwmD_VLjROrfN0xhTDVteGQ3eG8"}


@dataclass
class ReadingModel:
    dim: int = MISSING  # embedding, LSTM and projection width (240 in the paper)
    dropout: float = MISSING
    project_norms: list[str] = MISSING  # norms that also normalise the projections
    dq_square: bool = MISSING  # the question-passage similarity matrix 2d x 2d (upstream) or 2d -> d
    bias_after_norm: bool = MISSING  # batch-normalised projections: BN(x W) + b (upstream) or BN(x W + b)
    backward_from_end: bool = MISSING  # backward LSTM step t = t-th token from each sequence's end (upstream)


@dataclass
class ReadingOptim:
    lr: float = MISSING
    clip_norm: float = MISSING
    clip: str = MISSING  # how clip_norm applies: upstream | global | per_tensor | none (core/training/stepping.py)


@dataclass
class GeneratedStories:
    sizes: dict[str, int] = MISSING  # split (train/valid/test) -> questions


@dataclass
class ReadingConfig(TaskConfig):
    corpus: str = MISSING  # cnn or dailymail: data_dir/<data_subdir>/<corpus>/questions/...
    top_sentences: int | None = MISSING  # the paper's "top4"; null: whole stories
    min_count: int = MISSING  # a word enters the vocabulary when seen this often in training
    synthetic: GeneratedStories | None = MISSING
    train_limit: int | None = MISSING  # read only the first N training files
    eval_limit: int | None = MISSING  # evaluate on the first N questions of each split
    eval_batch_size: int = MISSING
    eval_batch_statistics: bool = MISSING  # batch norms evaluate with each batch's own statistics (upstream)
    bucket_pool: int = MISSING
    permute_entities: bool = MISSING  # a fresh entity permutation per training minibatch
    model: ReadingModel = MISSING
    optim: ReadingOptim = MISSING


class ReadingTask(Task):
    Config = ReadingConfig
    batch_dims = (1, 1, 1, 1, 0)  # passage, its mask, question, its mask (time-major), answers
    PAPER_TIME_UNIT = ("sec_per_100_steps", 100)  # Tables 6 and 8: seconds per 0.1k steps
    PAPER_CLOCK = "step"  # upstream timed only f_grad_shared + f_update (attentive_reader.py:450-458, bn branch)
    lower_is_better = True
    selection_metric = "valid_error"  # the reader keeps the model of the best validation error

    # ---- data ----------------------------------------------------------------------------------------------
    @classmethod
    def prepare_data(cls, cfg, root: Path, download: bool) -> None:
        if cfg.corpus not in ("cnn", "dailymail"):
            raise UserError(f"task.corpus={cfg.corpus}: use cnn or dailymail")
        corpus = root / cfg.corpus
        questions = corpus / "questions"
        if cfg.synthetic:
            if not (questions / SPLITS["test"]).exists():
                log.info("writing the generated cloze set to %s", corpus)
                write_cloze_folder(corpus, dict(cfg.synthetic.sizes))
        elif not questions.exists():
            archive = root / f"{cfg.corpus}.tgz"
            if not archive.exists() and download:
                cls._download(cfg.corpus, archive, cfg.make_target)
            if not archive.exists():
                raise MissingData(f"no {cfg.corpus} questions in {questions}: download the `{cfg.corpus}` questions "
                                  f"archive from {DMQA_PAGE} (the DeepMind Q&A data) into {archive}, then run "
                                  f"`{cfg.make_target}` again")
            log.info("unpacking %s", archive)
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
            if not questions.exists():
                raise MissingData(f"{archive} holds no {cfg.corpus}/questions folder")
        vocab_path = corpus / "vocab.json"
        train, skipped = read_split(questions / SPLITS["train"], cfg.train_limit)
        if vocab_path.exists():
            vocab = load_vocabulary(corpus, cfg.make_target)
        else:
            vocab = D.build_vocabulary(train, cfg.min_count)
            save_vocabulary(corpus, vocab)
        for split in ("train", "valid", "test"):
            name = D.cache_name(split, cfg.top_sentences, vocab)
            if (corpus / name).exists():
                continue
            qs, skipped = (train, skipped) if split == "train" else read_split(questions / SPLITS[split])
            enc, lost = D.encode(qs, vocab, cfg.top_sentences)
            facts = {"questions": len(enc), "skipped_files": skipped, "answer_cut_by_top": lost}
            if lost:
                log.info("%s: the top-%s cut dropped the answer from %d of %d passages", split,
                         cfg.top_sentences, lost, len(enc))
            D.save_split(corpus, split, cfg.top_sentences, vocab, enc, facts)

    @staticmethod
    def _download(corpus: str, archive: Path, make_target: str) -> None:
        """The questions archive from Google Drive through gdown (Drive's confirmation page for large files is
        its business, and it resumes an interrupted download; no checksum is published). No network: one line
        naming the command; a changed host page: a warning, then the manual route below."""
        import gdown

        log.info("downloading the %s questions archive into %s", corpus, archive)
        try:
            if not gdown.download(id=DRIVE_IDS[corpus], output=str(archive), quiet=False, resume=True):
                raise RuntimeError("gdown returned no file")
        except Exception as exc:
            archive.unlink(missing_ok=True)
            if is_network_error(exc):
                raise Offline(offline_message(f"the {corpus} questions", "drive.google.com", make_target,
                                              exc)) from exc
            log.warning("the download failed (%s: %s)", type(exc).__name__, exc)  # a changed host page: by hand

    def load_data(self) -> None:
        cfg = self.cfg
        corpus = self.root / cfg.corpus
        self.vocab = load_vocabulary(corpus, cfg.make_target)
        self.splits, self.split_facts = {}, {}
        for split in ("train", "valid", "test"):
            enc, facts = D.load_split(corpus, split, cfg.top_sentences, self.vocab, cfg.make_target)
            self.splits[split], self.split_facts[split] = enc, facts
        self.entity_ids = torch.tensor([i for i, w in enumerate(self.vocab) if w.startswith("@entity")])
        if len(self.entity_ids) == 0:
            raise MissingData(f"the vocabulary in {corpus} holds no @entity markers; the data are not DeepMind Q&A")
        train = self.splits["train"]
        self._lengths = train.passages.lengths().tolist()
        self._steps = count_batches(len(train), self.batch_size, cfg.bucket_pool)
        self.baselines = {f"{s}_error_most_frequent_entity": round(D.most_frequent_entity_error(
            self._eval_subset(s), self.entity_ids), 4) for s in ("valid", "test")}

    def assume_paper_data(self) -> None:
        self.vocab = ["<pad>"] * 65829  # the CNN top4 vocabulary size Cooijmans et al. report
        self.entity_ids = torch.arange(2, 600)

    def data_facts(self) -> dict:
        return {"vocabulary": len(self.vocab), "entities": len(self.entity_ids), "corpus": self.cfg.corpus,
                **{split: facts for split, facts in self.split_facts.items()}}

    def _eval_subset(self, split: str) -> D.Encoded:
        enc = self.splits[split]
        n = min(self.cfg.eval_limit or len(enc), len(enc))
        if n == len(enc):
            return enc
        return enc.head(n)

    # ---- model ---------------------------------------------------------------------------------------------
    def build_model(self) -> None:
        m = self.cfg.model
        self.model = AttentiveReader(len(self.vocab), m.dim, self.norm, self.norm.name in m.project_norms,
                                     m.dropout, dq_square=m.dq_square, bias_after_norm=m.bias_after_norm,
                                     backward_from_end=m.backward_from_end).to(self.device)
        self.optimizer = torch_adam(self.model.parameters(), lr=self.cfg.optim.lr)
        self.best: dict = {"valid_error": None, "test_error": None}

    # ---- training ------------------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def _batch(self, enc: D.Encoded, ids: list[int], mapping: torch.Tensor | None, device: torch.device):
        index = torch.as_tensor(ids, dtype=torch.int64)
        passage, passage_mask = enc.passages.padded(index)
        question, question_mask = enc.questions.padded(index)
        answers = enc.answers[index]
        if mapping is not None:  # one entity permutation for the whole minibatch, as upstream
            passage, question, answers = mapping[passage], mapping[question], mapping[answers]
        return tuple(t.to(device) for t in (passage, passage_mask, question, question_mask, answers))

    def _permutation(self, generator: torch.Generator) -> torch.Tensor:
        mapping = torch.arange(len(self.vocab))
        mapping[self.entity_ids] = self.entity_ids[torch.randperm(len(self.entity_ids), generator=generator)]
        return mapping

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = bucketed_batches(self._lengths, self.batch_size, epoch_generator(self.seed, epoch),
                                 self.cfg.bucket_pool)
        for i in range(start, len(order)):
            # each batch's permutation depends on (seed, epoch, batch) only: a resumed run sees the same
            mapping = None
            if self.cfg.permute_entities:
                key = (self.seed * 1_000_003 + epoch) * 1_000_003 + i
                mapping = self._permutation(torch.Generator().manual_seed(key))
            # on the CPU (the trainer moves batches to the device; a loader worker may build them)
            yield self._batch(self.splits["train"], order[i], mapping, torch.device("cpu"))

    def synthetic_batch(self, scale: float, generator: torch.Generator):
        """Random ids at the paper's shape: batch 64, top4 passages of about 100 tokens, 15-token questions."""
        b, t, q = max(1, round(self.batch_size * scale)), max(2, round(100 * scale)), max(2, round(15 * scale))
        vocab = len(self.vocab)
        passage = torch.randint(2, vocab, (t, b), generator=generator).to(self.device)
        question = torch.randint(2, vocab, (q, b), generator=generator).to(self.device)
        answers = self.entity_ids[torch.randint(0, len(self.entity_ids), (b,), generator=generator)].to(self.device)
        return passage, torch.ones(t, b, device=self.device), question, torch.ones(q, b, device=self.device), answers

    def describe_batch(self, scale: float) -> str:
        return (f"batch {max(1, round(self.batch_size * scale))} x {max(2, round(100 * scale))} passage and "
                f"{max(2, round(15 * scale))} question tokens")

    def loss(self, model, batch) -> torch.Tensor:
        *inputs, answers = batch
        return F.cross_entropy(model(*inputs), answers)

    # ---- evaluation ----------------------------------------------------------------------------------------
    def _error(self, split: str) -> tuple[float, float]:
        enc = self._eval_subset(split)
        wrong, loss, size = 0, 0.0, self.cfg.eval_batch_size
        with batch_statistics(self.model) if self.cfg.eval_batch_statistics else contextlib.nullcontext():
            for start in range(0, len(enc), size):
                ids = list(range(start, min(start + size, len(enc))))
                *inputs, answers = self._batch(enc, ids, None, self.device)
                logits = self.model(*inputs)
                wrong += int((logits.argmax(-1) != answers).sum())
                loss += float(F.cross_entropy(logits, answers, reduction="sum"))
        return wrong / len(enc), loss / len(enc)

    def evaluate(self) -> dict[str, float]:
        valid_error, valid_loss = self._error("valid")
        test_error, _ = self._error("test")
        if self.best["valid_error"] is None or valid_error < self.best["valid_error"]:
            self.best = {"valid_error": valid_error, "test_error": test_error}
        return {"valid_error": valid_error, "valid_loss": valid_loss, "test_error": test_error,
                "best_valid_error": self.best["valid_error"], "test_error_at_best_valid": self.best["test_error"]}

    def summary_extras(self) -> dict:
        return {"baselines": self.baselines}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best = state["best"]
