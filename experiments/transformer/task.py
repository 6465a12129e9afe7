"""Transformer translation (the paper's Table 4): the translation task's data, BPE, batches, beam search and
BLEU, with the Transformer base of bzhangGo/zero, Adam (0.9, 0.98) and the inverse-square-root schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from experiments.transformer.model import Transformer
from experiments.translation.task import Decoding, GeneratedPairs, TranslationConfig, TranslationTask


@dataclass
class TransformerModel:
    dim: int = MISSING
    heads: int = MISSING
    ff: int = MISSING
    enc_layers: int = MISSING
    dec_layers: int = MISSING
    dropout: float = MISSING
    norm_position: str = "post"  # post: x = N(x + F(x)), as the paper (zero); pre: x = x + F(N(x)), final norm


@dataclass
class TransformerOptim:
    lr: float = MISSING  # the peak, reached at the end of warm-up; then lr * sqrt(warmup / step)
    warmup: int = MISSING
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-8
    label_smoothing: float = MISSING
    clip_norm: float | None = None  # zero does not clip


@dataclass
class TransformerConfig(TranslationConfig):
    model: TransformerModel = MISSING
    optim: TransformerOptim = MISSING
    decode: Decoding = MISSING
    synthetic: GeneratedPairs | None = None


class TransformerTask(TranslationTask):
    Config = TransformerConfig

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

    def train_step(self, batch) -> torch.Tensor:
        loss = super().train_step(batch)
        self.scheduler.step()
        return loss

    def summary_extras(self) -> dict:
        return {"bleu_signature": self.signature, "norm_position": self.cfg.model.norm_position}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
