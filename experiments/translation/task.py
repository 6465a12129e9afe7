"""The translation task: RNNSearch on BPE ids, Adam, label smoothing, token-bucketed batches, BLEU with
sacrebleu on detokenised beam-search output for each evaluation set."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from experiments.core.errors import UserError
from experiments.core.seeding import epoch_generator
from experiments.core.task import Task
from experiments.translation import data as D
from experiments.translation.beam import beam_search
from experiments.translation.model import RNNSearch
from experiments.translation.synthetic import write_synthetic
from rmsnorm import NormSpec

log = logging.getLogger(__name__)


def bleu(hypotheses: list[str], references: list[str]):
    from sacrebleu.metrics import BLEU

    metric = BLEU()  # case-sensitive, 13a tokenisation, exp smoothing: the paper's signature
    return metric.corpus_score(hypotheses, [references]), str(metric.get_signature())


class TranslationTask(Task):
    lower_is_better = False

    def __init__(self, cfg: DictConfig, norm: NormSpec, data_dir: Path, device: torch.device, seed: int):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.primary_metric = cfg.primary_metric
        root = Path(data_dir) / cfg.data_subdir
        if cfg.synthetic:
            self._ensure_synthetic(root)
        self.sp = D.load_bpe(root / cfg.bpe_model)
        src, tgt = cfg.src_lang, cfg.tgt_lang
        self.train = D.encode_file(root / cfg.files.train, self.sp, src, tgt, cfg.max_len)
        if len(self.train) == 0:
            raise UserError(f"no training pair of {root / cfg.files.train} fits max_len={cfg.max_len}")
        self.eval_sets = {}
        for name, file in cfg.files.items():
            if name != "train":
                enc = D.encode_file(root / file, self.sp, src, tgt, None)
                limit = cfg.eval_limit or len(enc)
                self.eval_sets[name] = enc.subset(list(range(min(limit, len(enc))))) if limit < len(enc) else enc
        self.batch_size = int(cfg.batch_size)
        self._lengths = torch.maximum(self.train.src_lengths(), self.train.tgt_lengths()).tolist()
        self._steps = D.count_batches(len(self._lengths), self.batch_size, cfg.bucket_pool)
        self.build_model(norm, self.sp.get_piece_size())

    def build_model(self, norm: NormSpec, vocab: int) -> None:
        """The model and optimiser from the config, the norm and the vocabulary size (no data)."""
        m = self.cfg.model
        self.model = RNNSearch(vocab, vocab, m.emb, m.hidden, norm, m.dropout).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.optim.lr)
        self.signature = None

    @classmethod
    def for_timing(cls, cfg: DictConfig, norm: NormSpec, device: torch.device, seed: int) -> TranslationTask:
        """The paper's model without data: the vocabulary is the BPE size the config asks for."""
        task = cls.__new__(cls)
        task.cfg, task.device, task.seed = cfg, device, seed
        task.batch_size = int(cfg.batch_size)
        task.build_model(norm, int(cfg.bpe_vocab_size))
        return task

    #: tokens per sentence in a timing batch: about the mean WMT14 sentence in 32k BPE
    TIMING_LENGTH = 30

    def _timing_shape(self, scale: float) -> tuple[int, int]:
        return max(1, round(self.batch_size * scale)), max(2, round(self.TIMING_LENGTH * scale))

    def synthetic_batch(self, scale: float, generator: torch.Generator):
        """Random ids at the paper's shape (batch 80, 30 tokens a side); `scale` shrinks batch and length."""
        b, t = self._timing_shape(scale)
        vocab = self.model.out_proj.out_features
        src = torch.randint(4, vocab, (t, b), generator=generator).to(self.device)
        tgt = torch.randint(4, vocab, (t + 1, b), generator=generator).to(self.device)
        return src, torch.ones(t, b, device=self.device), tgt[:-1], tgt[1:]

    def describe_batch(self, scale: float) -> str:
        b, t = self._timing_shape(scale)
        return f"batch {b} x {t} source and {t} target tokens"

    def _ensure_synthetic(self, root: Path) -> None:
        syn, files = self.cfg.synthetic, self.cfg.files
        if not all((root / f).exists() for f in files.values()):
            log.info("writing the generated demo translation task to %s", root)
            write_synthetic(root, dict(syn.sizes), dict(files))
        if not (root / self.cfg.bpe_model).exists():
            pairs = D.read_pairs(root / files.train, self.cfg.src_lang, self.cfg.tgt_lang)
            D.train_bpe([s for pair in pairs for s in pair], root / self.cfg.bpe_model, self.cfg.bpe_vocab_size)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = D.bucketed_batches(self._lengths, self.batch_size, epoch_generator(self.seed, epoch),
                                   self.cfg.bucket_pool)
        for ids in order[start:]:
            pairs = [self.train.pair(i) for i in ids]
            src = D.pad_batch([s for s, _ in pairs], bos=False, eos=True).to(self.device)
            tgt = D.pad_batch([t for _, t in pairs], bos=True, eos=True).to(self.device)
            yield src, (src != D.PAD).float(), tgt[:-1], tgt[1:]

    def train_step(self, batch) -> torch.Tensor:
        src, src_mask, tgt_in, tgt_out = batch
        logits = self.model(src, src_mask, tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=D.PAD,
                               label_smoothing=self.cfg.optim.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_norm)
        self.optimizer.step()
        return loss.detach()

    def translate(self, enc: D.Encoded, batch_size: int = 64) -> list[str]:
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
        return metrics

    def summary_extras(self) -> dict:
        return {"bleu_signature": self.signature}

    def describe_shrinks(self) -> list[str]:
        return list(self.cfg.get("shrinks", []))
