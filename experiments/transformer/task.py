"""Transformer translation (the paper's Table 4): the translation task's data, BPE, batches and BLEU, with the
Transformer base of bzhangGo/zero, Adam (0.9, 0.98), the inverse-square-root schedule, and zero's loss, long-pair
truncation and beam search where the config asks for them (preset=paper; the demo keeps the translation task's)."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from experiments.core.data.batching import Ragged, shuffled, token_batches
from experiments.core.errors import UserError
from experiments.core.training import distributed
from experiments.core.training.adam import torch_adam
from experiments.core.training.seeding import epoch_generator
from experiments.transformer.model import Transformer
from experiments.translation import data as D
from experiments.translation.beam import zero_beam_search
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
    init: str = MISSING  # glorot: zero's (Glorot-uniform linear weights, zero biases); torch: nn.Linear's default
    embedding_bias: bool = MISSING  # zero's bias on the scaled embeddings: one vector, both sides


class Loss(enum.Enum):
    sentence_mean = "sentence_mean"
    token_mean = "token_mean"


class Smoothing(enum.Enum):
    others = "others"
    uniform = "uniform"


class LongPairs(enum.Enum):
    drop = "drop"
    truncate = "truncate"


class Search(enum.Enum):
    zero = "zero"
    nematus = "nematus"


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
    # sentence_mean: each sentence's mean token loss, averaged over the batch's sentences (zero);
    # token_mean: the mean over the batch's target tokens. Either over the whole batch however it is split
    loss: Loss = MISSING
    # where label smoothing's mass goes. others: over the V - 1 other tokens, and the smoothed target's entropy
    # subtracted (zero: the loss is a KL divergence, 0 at the target); uniform: over all V (torch's)
    smoothing: Smoothing = MISSING


@dataclass
class TransformerDecoding(Decoding):
    search: Search = MISSING  # zero: zero's search.py (GNMT penalty inside); nematus: the RNN task's beam_search
    extra_len: int = MISSING  # search=zero: hypotheses up to source length (EOS included) + this; else max_len_ratio


@dataclass
class TransformerConfig(TranslationConfig):
    model: TransformerModel = MISSING
    optim: TransformerOptim = MISSING
    decode: TransformerDecoding = MISSING
    synthetic: GeneratedPairs | None = MISSING
    batch_tokens: int | None = MISSING  # batches of at most this many padded tokens a side; null: batch_size sentences
    # drop: training pairs over max_len BPE tokens a side are left out; truncate: every pair kept, each side cut
    # to its first max_len - 1 tokens, so that with its EOS it is max_len ids (zero cuts at max_len ids)
    long_pairs: LongPairs = MISSING


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

    def load_train(self, name: str) -> D.Encoded:
        """long_pairs=drop: the translation task's; truncate: every pair (zero skips only empty lines), each
        side cut to its first max_len - 1 tokens."""
        cfg = self.cfg
        if cfg.long_pairs == LongPairs.drop:
            return super().load_train(name)
        full = D.load_encoded(self.root, name, self.sp, cfg.src_lang, cfg.tgt_lang, None, cfg.make_target)
        keep = (full.src.lengths() > 0).nonzero().flatten()
        full = full.subset(keep) if len(keep) < len(full) else full
        return D.Encoded(truncated(full.src, cfg.max_len - 1), truncated(full.tgt, cfg.max_len - 1))

    def build_model(self) -> None:
        m, o = self.cfg.model, self.cfg.optim
        self.model = Transformer(self.vocab, m.dim, m.heads, m.ff, m.enc_layers, m.dec_layers, m.dropout, self.norm,
                                 m.norm_position, init=m.init, embedding_bias=m.embedding_bias).to(self.device)
        self.optimizer = torch_adam(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.adam_eps)
        warmup = max(1, int(o.warmup))
        # step s (from 1): lr * min(s / warmup, sqrt(warmup / s)), the Transformer's schedule with its peak named
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warmup, (warmup / (s + 1)) ** 0.5))
        self.signature = None

    def step_batches(self, batch) -> list:
        """`optim.accumulate` micro-batches of the whole batch, each with the scale that makes the step's loss
        the mean over the global batch's target tokens (loss=token_mean) or sentences (sentence_mean) whatever
        the split."""
        if self.cfg.optim.loss == Loss.token_mean:
            count = (batch[3] != D.PAD).sum()
        else:
            count = torch.tensor(batch[3].shape[1], device=batch[3].device)
        group = distributed.current()
        total = distributed.sum_over_ranks(count, group) if group.enabled else count
        # DDP averages the ranks' gradients: times the world size, the sum over ranks' losses / total
        scale = group.world / total.clamp(min=1)
        return [(part, scale) for part in micro_batches(batch, int(self.cfg.optim.accumulate))]

    def loss(self, model, micro_batch) -> torch.Tensor:
        (src, src_mask, tgt_in, tgt_out), scale = micro_batch
        o = self.cfg.optim
        return sequence_loss(model(src, src_mask, tgt_in), tgt_out, o.label_smoothing, o.smoothing, o.loss) * scale

    def translate(self, enc: D.Encoded, batch_size: int | None = None) -> list[str]:
        d = self.cfg.decode
        batch_size = batch_size or int(d.batch)
        if d.search == Search.nematus:
            return super().translate(enc, batch_size)
        out = []
        for start in range(0, len(enc), batch_size):
            srcs = [enc.pair(i)[0] for i in range(start, min(start + batch_size, len(enc)))]
            src = D.pad_batch(srcs, bos=False, eos=True).to(self.device)
            out += self.sp.decode(zero_beam_search(self.model, src, (src != D.PAD).float(), d.beam,
                                                   int(d.extra_len), d.length_alpha))
        return out

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


def sequence_loss(logits: torch.Tensor, target: torch.Tensor, eps: float, smoothing: Smoothing,
                  reduce: Loss) -> torch.Tensor:
    """The label-smoothed cross-entropy of (T, B, V) logits against (T, B) targets (PAD ignored), summed over
    the tokens (token_mean) or over sentences of each sentence's mean (sentence_mean): the caller divides by the
    batch's tokens or sentences. smoothing=others is zero's (utils/util.py label_smooth, models/transformer.py):
    target 1 - eps on the gold token and eps / (V - 1) on each other, minus that target's entropy."""
    if smoothing == Smoothing.uniform and reduce == Loss.token_mean:  # the one torch call, as before the options
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=D.PAD, reduction="sum",
                               label_smoothing=eps)
    if smoothing == Smoothing.uniform:
        tokens = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=D.PAD, reduction="none",
                                 label_smoothing=eps).view_as(target)
    else:
        log_probs = F.log_softmax(logits.float(), dim=-1)
        gold = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        tokens = -gold
        if 0.0 < eps < 1.0:
            n = logits.shape[-1] - 1
            p, q = 1.0 - eps, eps / n
            entropy = -(p * math.log(p) + n * q * math.log(q + 1e-20))
            tokens = p * tokens - q * (log_probs.sum(-1) - gold) - entropy
    real = target != D.PAD
    tokens = tokens.masked_fill(~real, 0.0)
    if reduce == Loss.token_mean:
        return tokens.sum()
    return (tokens.sum(0) / real.sum(0).clamp(min=1)).sum()


def truncated(seqs: Ragged, length: int) -> Ragged:
    """Each sequence cut to its first `length` ids, with tensor ops only (millions of pairs)."""
    lengths = seqs.lengths().clamp(max=length)
    offsets = torch.zeros_like(seqs.offsets)
    offsets[1:] = lengths.cumsum(0)
    shift = torch.repeat_interleave(seqs.offsets[:-1] - offsets[:-1], lengths)
    return Ragged(seqs.flat[shift + torch.arange(int(offsets[-1]))], offsets)
