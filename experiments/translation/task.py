"""The translation task: RNNSearch on BPE ids, Adam, label smoothing, token-bucketed batches, BLEU with
sacrebleu on detokenised beam-search output for each evaluation set."""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from experiments.core.data.batching import bucketed_batches, count_batches
from experiments.core.errors import UserError
from experiments.core.training import distributed
from experiments.core.training.adam import torch_adam
from experiments.core.training.seeding import epoch_generator
from experiments.core.training.task import Task, TaskConfig
from experiments.translation import data as D
from experiments.translation.beam import beam_search
from experiments.translation.model import RNNSearch
from experiments.translation.prepare import prepare
from experiments.translation.probe import preactivation_stats

log = logging.getLogger(__name__)


def bleu(hypotheses: list[str], references: list[str]):
    from sacrebleu.metrics import BLEU

    metric = BLEU()  # case-sensitive, 13a tokenisation, exp smoothing: the paper's signature
    return metric.corpus_score(hypotheses, [references]), str(metric.get_signature())


@dataclass
class TranslationModel:
    emb: int = MISSING
    hidden: int = MISSING
    dropout: float = MISSING
    init_mean: float = MISSING  # centre of the N(., 0.01) weight init; Fig. 4's robustness test sets 0.2
    gru2_bias_on_state: bool = MISSING  # Nematus: the cGRU's second GRU adds its bias to U h, inside the norm


class LossScale(enum.Enum):
    sentence_sum = "sentence_sum"
    token_mean = "token_mean"


@dataclass
class TranslationOptim:
    lr: float = MISSING
    lr_by_norm: dict[str, float] = MISSING  # a norm's own learning rate instead of lr (the demo's no-norm model)
    label_smoothing: float = MISSING
    clip_norm: float | None = MISSING  # gradient norm clipping; null: none
    clip: str = MISSING  # over all parameters together, as Nematus
    # sentence_sum: each sentence's token losses summed, the mean over sentences (Nematus: the clip acts on the
    # gradient of that); token_mean: the mean over target tokens
    loss: LossScale = MISSING


@dataclass
class Decoding:
    beam: int = MISSING
    length_alpha: float = MISSING  # score / length^alpha
    max_len_ratio: float = MISSING  # hypotheses up to ratio x source length + 10 tokens
    batch: int = MISSING  # sentences decoded together (the hypotheses do not depend on it)


@dataclass
class GeneratedPairs:
    """The generated task's size and difficulty (experiments/translation/synthetic.py)."""

    sizes: dict[str, int] = MISSING  # split -> pairs
    lexicon: dict[str, int] = MISSING  # word class (subject, verb, adjective, noun, place) -> words
    zipf: float = MISSING  # word frequencies fall as rank^-zipf: larger, more rare words
    compound: float = MISSING  # chance an adjective + noun become one German compound
    clauses: int = MISSING  # at most this many clauses a sentence


@dataclass
class TranslationConfig(TaskConfig):
    src_lang: str = MISSING
    tgt_lang: str = MISSING
    files: dict[str, str] = MISSING  # split -> parquet file or glob in the hub's WMT schema; `train`, eval sets
    bpe_model: str = MISSING
    bpe_vocab_size: int = MISSING
    synthetic: GeneratedPairs | None = MISSING  # generate a toy task of these sizes instead
    max_len: int = MISSING  # longer training pairs (in BPE tokens) are dropped, with a count in the log
    bucket_pool: int = MISSING  # batches sorted by length within pools of this many
    eval_limit: int | None = MISSING  # evaluate on the first N sentences of each set
    probe_limit: int | None = MISSING  # Table 5's pre-activation statistics over the first N dev sentences (null: all)
    model: TranslationModel = MISSING
    optim: TranslationOptim = MISSING
    decode: Decoding = MISSING


class TranslationTask(Task):
    Config = TranslationConfig
    batch_dims = (1, 1, 1, 1)  # src, src_mask, tgt_in, tgt_out: time-major
    lower_is_better = False
    selection_metric = "dev_bleu"  # the paper validated by BLEU on newstest2013 (each preset's `dev` file)
    #: tokens per sentence in a timing batch: about the mean WMT14 sentence in 32k BPE
    TIMING_LENGTH = 30

    @classmethod
    def prepare_data(cls, cfg, root: Path, download: bool) -> None:
        prepare(cfg, root, download)

    def load_data(self) -> None:
        cfg, root = self.cfg, self.root
        if "train" not in cfg.files:
            raise UserError(f"task.files names no `train` file; it names {', '.join(cfg.files)}")
        self.sp = D.load_bpe(root / cfg.bpe_model, cfg.make_target)
        if self.sp.get_piece_size() != cfg.bpe_vocab_size:  # learnt for an older preset: the run would be mislabelled
            raise UserError(f"{root / cfg.bpe_model} has {self.sp.get_piece_size()} pieces but "
                            f"task.bpe_vocab_size={cfg.bpe_vocab_size}; run `{cfg.make_target}` to learn it again")
        src, tgt = cfg.src_lang, cfg.tgt_lang
        self.train = self.load_train(cfg.files.train)
        if len(self.train) == 0:
            raise UserError(f"no training pair of {root / cfg.files.train} fits max_len={cfg.max_len}")
        self.eval_sets = {}
        for name, file in cfg.files.items():
            if name != "train":
                enc = D.load_encoded(root, file, self.sp, src, tgt, None, cfg.make_target)
                limit = min(cfg.eval_limit or len(enc), len(enc))
                self.eval_sets[name] = enc.subset(torch.arange(limit)) if limit < len(enc) else enc
        self._lengths = torch.maximum(self.train.src.lengths(), self.train.tgt.lengths()).tolist()
        self._steps = count_batches(len(self._lengths), self.batch_size, cfg.bucket_pool)
        self.vocab = self.sp.get_piece_size()

    def load_train(self, name: str) -> D.Encoded:
        """The training pairs, those over max_len BPE tokens a side left out (Nematus' maxlen)."""
        cfg = self.cfg
        return D.load_encoded(self.root, name, self.sp, cfg.src_lang, cfg.tgt_lang, cfg.max_len, cfg.make_target)

    def assume_paper_data(self) -> None:
        self.vocab = int(self.cfg.bpe_vocab_size)

    def data_facts(self) -> dict:
        return {"train_pairs": len(self.train), **{f"{n}_pairs": len(e) for n, e in self.eval_sets.items()},
                "bpe_pieces": self.vocab, "folder": str(self.root)}

    def build_model(self) -> None:
        m = self.cfg.model
        self.model = RNNSearch(self.vocab, self.vocab, m.emb, m.hidden, self.norm, m.dropout,
                               init_mean=m.init_mean, gru2_bias_on_state=m.gru2_bias_on_state).to(self.device)
        lr = self.cfg.optim.lr_by_norm.get(self.norm.name, self.cfg.optim.lr)
        self.optimizer = torch_adam(self.model.parameters(), lr=float(lr))
        self.signature = None

    def _timing_shape(self, scale: float) -> tuple[int, int]:
        return max(1, round(self.batch_size * scale)), max(2, round(self.TIMING_LENGTH * scale))

    def synthetic_batch(self, scale: float, generator: torch.Generator):
        """Random ids at the paper's shape (batch 80, 30 tokens a side); `scale` shrinks batch and length."""
        b, t = self._timing_shape(scale)
        src = torch.randint(4, self.vocab, (t, b), generator=generator).to(self.device)
        tgt = torch.randint(4, self.vocab, (t + 1, b), generator=generator).to(self.device)
        return src, torch.ones(t, b, device=self.device), tgt[:-1], tgt[1:]

    def describe_batch(self, scale: float) -> str:
        b, t = self._timing_shape(scale)
        return f"batch {b} x {t} source and {t} target tokens"

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = bucketed_batches(self._lengths, self.batch_size, epoch_generator(self.seed, epoch),
                                   self.cfg.bucket_pool)
        for ids in order[start:]:
            yield self._pad([self.train.pair(i) for i in ids])

    @staticmethod
    def _pad(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, ...]:
        """(src, src_mask, tgt_in, tgt_out), time-major, on the CPU (the trainer moves batches to the device;
        a loader worker may build them)."""
        src = D.pad_batch([s for s, _ in pairs], bos=False, eos=True)
        tgt = D.pad_batch([t for _, t in pairs], bos=True, eos=True)
        return src, (src != D.PAD).float(), tgt[:-1], tgt[1:]

    def loss(self, model, batch) -> torch.Tensor:
        src, src_mask, tgt_in, tgt_out = batch
        logits = model(src, src_mask, tgt_in)
        total = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=D.PAD, reduction="sum",
                                label_smoothing=self.cfg.optim.label_smoothing)
        group = distributed.current()
        if self.cfg.optim.loss == LossScale.sentence_sum:
            # ranks hold equal numbers of sentences: the mean of their means is the global batch's mean
            loss = total / tgt_out.shape[1]
        else:  # the mean over the global batch's tokens, not the mean of the ranks' means
            tokens = (tgt_out != D.PAD).sum()
            count = distributed.sum_over_ranks(tokens, group) / group.world if group.enabled else tokens
            loss = total / count.clamp(min=1)
        return loss

    def translate(self, enc: D.Encoded, batch_size: int | None = None) -> list[str]:
        batch_size = batch_size or int(self.cfg.decode.batch)
        out = []
        for start in range(0, len(enc), batch_size):
            srcs = [enc.pair(i)[0] for i in range(start, min(start + batch_size, len(enc)))]
            src = D.pad_batch(srcs, bos=False, eos=True).to(self.device)
            max_len = int(self.cfg.decode.max_len_ratio * src.shape[0]) + 10
            ids = beam_search(self.model, src, (src != D.PAD).float(), self.cfg.decode.beam, max_len,
                              self.cfg.decode.length_alpha)
            out += self.sp.decode(ids)
        return out

    def evaluate(self) -> dict[str, float]:
        metrics = {}
        for name, enc in self.eval_sets.items():
            score, self.signature = bleu(self.translate(enc), enc.refs)
            metrics[f"{name}_bleu"] = round(score.score, 2)
            # BLEU's brevity penalty: below 1 where the translations are shorter than the references (words or
            # clauses left out), a loss the n-gram precisions alone do not show
            metrics[f"{name}_bleu_bp"] = round(score.bp, 4)
        return metrics

    def copy_baselines(self) -> dict[str, float]:
        """The model-free baseline: BLEU of the source sentence itself as the translation (shared words, names
        and numbers score; a model has to beat it to have learnt anything)."""
        return {f"{name}_bleu_copy_source": round(bleu(self.sp.decode([enc.pair(i)[0] for i in range(len(enc))]),
                                                       enc.refs)[0].score, 2)
                for name, enc in self.eval_sets.items()}

    def summary_extras(self) -> dict:
        # Table 5: the decoder GRU's hidden-to-hidden pre-activation on the dev set (newstest2013 in the paper)
        name = "dev" if "dev" in self.eval_sets else next(iter(self.eval_sets))
        stats = preactivation_stats(self.model, self.eval_sets[name], self.device, limit=self.cfg.probe_limit)
        return {"bleu_signature": self.signature, "baselines": self.copy_baselines(),
                "preactivation": {"set": name, **{k: list(v) for k, v in stats.items()}}}

