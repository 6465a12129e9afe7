"""Transformer translation (the paper's Table 4): the translation task's data, BPE, batches, beam search and
BLEU, with the Transformer base of bzhangGo/zero, Adam (0.9, 0.98) and the inverse-square-root schedule."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from experiments.core.data.batching import shuffled, token_batches
from experiments.core.errors import UserError
from experiments.core.training import distributed
from experiments.core.training.seeding import epoch_generator
from experiments.transformer.model import Transformer
from experiments.translation import data as D
from experiments.translation.task import Decoding, GeneratedPairs, TranslationConfig, TranslationTask


@dataclass
class TransformerModel:
    dim: int = MISSING
    heads: int = MISSING
    ff: int = MISSING
    enc_layers: int = MISSING
    dec_layers: int = MISSING
    dropout: float = MISSING
    norm_position: str = MISSING  # post: x = N(x + F(x)), as the paper (zero); pre: x = x + F(N(x)), final norm


@dataclass
class TransformerOptim:
    lr: float = MISSING  # the peak, reached at the end of warm-up; then lr * sqrt(warmup / step)
    warmup: int = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    adam_eps: float = MISSING
    label_smoothing: float = MISSING
    clip_norm: float | None = MISSING  # zero does not clip
    clip: str = MISSING
    accumulate: int = MISSING  # each batch runs as this many micro-batches, gradients summed: less memory, same step


@dataclass
class TransformerConfig(TranslationConfig):
    model: TransformerModel = MISSING
    optim: TransformerOptim = MISSING
    decode: Decoding = MISSING
    synthetic: GeneratedPairs | None = MISSING
    batch_tokens: int | None = MISSING  # batches of at most this many padded tokens a side; null: batch_size sentences


class TransformerTask(TranslationTask):
    Config = TransformerConfig

    def load_data(self) -> None:
        super().load_data()
        self._token_batches = None
        if self.cfg.batch_tokens is not None:
            if self.cfg.batch_tokens <= self.cfg.max_len:
                raise UserError(f"task.batch_tokens={self.cfg.batch_tokens} must exceed task.max_len={self.cfg.max_len}"
                                " (a pair's tokens plus EOS must fit a batch): raise batch_tokens")
            # counted as the padded tensors are: each side's tokens plus its EOS (or BOS); in whole groups of 8
            # sentences (or of the process count, where 8 does not divide by it), so that every batch splits
            # evenly under torchrun and 1, 2, 4 or 8 processes train on the very same batches
            self._token_batches = token_batches([n + 1 for n in self._lengths], int(self.cfg.batch_tokens),
                                                math.lcm(8, distributed.current().world))
            self._steps = len(self._token_batches)

    def check_processes(self, group) -> None:
        if self.cfg.batch_tokens is None:
            super().check_processes(group)

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        if self._token_batches is None:
            yield from super().batches(epoch, start)
            return
        for ids in shuffled(self._token_batches, epoch_generator(self.seed, epoch))[start:]:
            yield self._pad([self.train.pair(i) for i in ids])

    def _timing_shape(self, scale: float) -> tuple[int, int]:
        """A batch of the paper's token budget, TIMING_LENGTH tokens a sentence; `scale` shrinks the number of
        sentences only (a shorter sentence would make attention and the per-token work unrepresentative)."""
        sentences = (self.cfg.batch_tokens // self.TIMING_LENGTH) if self.cfg.batch_tokens else self.batch_size
        return max(1, round(sentences * scale)), self.TIMING_LENGTH

    def build_model(self) -> None:
        m, o = self.cfg.model, self.cfg.optim
        self.model = Transformer(self.vocab, m.dim, m.heads, m.ff, m.enc_layers, m.dec_layers, m.dropout, self.norm,
                                 m.norm_position).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.adam_eps)
        warmup = max(1, int(o.warmup))
        # step s (from 1): lr * min(s / warmup, sqrt(warmup / s)), the Transformer's schedule with its peak named
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warmup, (warmup / (s + 1)) ** 0.5))
        self.signature = None

    def step_batches(self, batch) -> list:
        """`optim.accumulate` micro-batches of the whole batch, each with the scale that makes the step's loss
        the mean over the global batch's target tokens whatever the split."""
        tokens = (batch[3] != D.PAD).sum()
        group = distributed.current()
        total = distributed.sum_over_ranks(tokens, group) if group.enabled else tokens
        # DDP averages the ranks' gradients: times the world size, the sum over ranks' token losses / total
        scale = group.world / total.clamp(min=1)
        return [(part, scale) for part in micro_batches(batch, int(self.cfg.optim.accumulate))]

    def loss(self, model, micro_batch) -> torch.Tensor:
        (src, src_mask, tgt_in, tgt_out), scale = micro_batch
        logits = model(src, src_mask, tgt_in)
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=D.PAD, reduction="sum",
                               label_smoothing=self.cfg.optim.label_smoothing) * scale

    def summary_extras(self) -> dict:
        return {"bleu_signature": self.signature, "norm_position": self.cfg.model.norm_position,
                "baselines": self.copy_baselines()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])


def micro_batches(batch, parts: int) -> list[tuple[torch.Tensor, ...]]:
    """A time-major (src, src_mask, tgt_in, tgt_out) batch cut into up to `parts` runs of sentences, each
    trimmed to its own longest sentence (batches are sorted by length, so later parts are the longer ones)."""
    src, src_mask, tgt_in, tgt_out = batch
    if parts < 1:
        raise ValueError(f"{parts} micro-batches: need at least 1")
    if parts == 1:
        return [batch]
    out = []
    for rows in torch.arange(src.shape[1]).tensor_split(min(parts, src.shape[1])):
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        s_mask = src_mask[:, lo:hi]
        t_out = tgt_out[:, lo:hi]
        s_len = int(s_mask.sum(0).max())
        t_len = int((t_out != D.PAD).sum(0).max())
        out.append((src[:s_len, lo:hi], s_mask[:s_len], tgt_in[:t_len, lo:hi], t_out[:t_len]))
    return out
