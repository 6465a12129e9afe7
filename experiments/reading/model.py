"""The bidirectional Attentive Reader (Hermann et al. 2015) as the reference code builds it
(cooijmanstim/Attentive_reader, `--use_bidir 1 --use_dq_sims 1 --use_desc_skip_c_g 1`):

    E             one embedding table for passage and question, dropout 0.5 on what enters the LSTMs
    h_t           = [LSTM_fwd(E p); LSTM_bwd(E p)]_t                                   (T, B, 2d)
    q             = [last forward state; last backward state] of the question LSTMs    (B, 2d)
    s_t           = (W_dq h_t) . (W_dq q)                     one scalar per position
    m_t           = tanh(W_ctx h_t + b + W_q q + s_t)
    alpha         = masked softmax_t (v . m_t),   r = sum_t alpha_t h_t
    g             = tanh(W_r r + W_q' q + b' + W_m mean_t(h_t)),  dropout 0.5
    logits        = W_o g over the whole vocabulary, as upstream

The norm sits inside the four LSTMs; with `project_norm` (the BatchNorm-Everywhere row) the projections
W_ctx h, W_q q, W_r r, W_q' q and W_m mean(h) are batch-normalised too (gain 0.1, as upstream's `bnff`).
Init: square matrices orthogonal x 0.05, others Glorot-uniform, v uniform +-sqrt(1/d), biases 0.

Upstream's choices, each an option (True under preset=paper; the demo keeps False, its calibration's):
- `dq_square`: W_dq is 2d x 2d (so orthogonal x 0.05), as upstream's `ff_att_bi_dq`; False: 2d -> d, Glorot;
- `bias_after_norm`: a batch-normalised projection adds its bias after the norm, as its shift (upstream's
  `bnff`); False: inside W x + b, where the norm's mean subtraction cancels it;
- `backward_from_end`: the backward LSTMs read each sequence reversed and left-aligned (upstream's
  `reverse_realign`), so their step t, and a batch norm's statistics for step t, is each sequence's t-th token
  from its end; False: step t is position t of the padded batch (the same outputs for norms without
  per-step statistics).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from rmsnorm import NormLSTM, NormSpec, StepBatchNorm


def realign_index(mask: torch.Tensor) -> torch.Tensor:
    """(T, B) positions for each sequence read backwards from its last token, then wrapping round: step s of
    sequence b reads position (L_b - 1 - s) mod L_b. On valid positions the map is its own inverse."""
    lengths = mask.sum(0).round().long().clamp_min(1)
    steps = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1)
    return (lengths - 1 - steps) % lengths


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside, the batch norms of a model in eval mode normalise with each batch's own statistics, as upstream
    validates (its evaluation is the training graph with dropout off); their running estimates stay as they were."""
    norms = [m for m in model.modules() if isinstance(m, StepBatchNorm) and not m.training]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, (mean, var) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.eval()


def gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (T, B, d) re-ordered along time per sequence: out[s, b] = x[index[s, b], b]."""
    return x.gather(0, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Projection(nn.Module):
    """x W (+ b), batch-normalised over the valid rows when asked (statistics over batch and positions); with
    `bias_after_norm` the bias is the norm's shift, BN(x W) + b."""

    def __init__(self, d_in: int, d_out: int, bias: bool, batch_norm: bool, bias_after_norm: bool = False):
        super().__init__()
        after = batch_norm and bias_after_norm
        self.linear = nn.Linear(d_in, d_out, bias=bias and not after)
        self.norm = StepBatchNorm(d_out, max_steps=1, bias=bias and after) if batch_norm else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.linear(x)
        if self.norm is None:
            return y
        flat = y.reshape(-1, y.shape[-1])
        return self.norm(flat, 0, None if mask is None else mask.reshape(-1)).view_as(y)


class AttentiveReader(nn.Module):
    def __init__(self, vocab: int, dim: int, norm: NormSpec, project_norm: bool = False, dropout: float = 0.5, *,
                 dq_square: bool = False, bias_after_norm: bool = False, backward_from_end: bool = False):
        super().__init__()
        d = dim
        self.backward_from_end = backward_from_end
        self.embedding = nn.Embedding(vocab, d, padding_idx=0)
        self.passage = NormLSTM(d, d, norm, bidirectional=True)
        self.question = NormLSTM(d, d, norm, bidirectional=True)
        self.att_ctx = Projection(2 * d, d, True, project_norm, bias_after_norm)
        self.att_q = Projection(2 * d, d, False, project_norm, bias_after_norm)
        self.dq = nn.Linear(2 * d, 2 * d if dq_square else d, bias=False)
        self.att_v = nn.Linear(d, 1)
        self.out_r = Projection(2 * d, d, True, project_norm, bias_after_norm)
        self.out_q = Projection(2 * d, d, False, project_norm, bias_after_norm)
        self.out_mean = Projection(2 * d, d, False, project_norm, bias_after_norm)
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(d, vocab)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.att_v.in_features
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                w = module.weight
                if w.shape[0] == w.shape[1]:
                    nn.init.orthogonal_(w, gain=0.05)
                else:
                    nn.init.xavier_uniform_(w)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.uniform_(self.att_v.weight, -math.sqrt(1.0 / d), math.sqrt(1.0 / d))
        with torch.no_grad():
            self.embedding.weight[0].zero_()  # padding
        # the LSTM cells keep their own init (rmsnorm.NormLSTMCell.reset_parameters: the same rule)

    def _encode(self, lstm: NormLSTM, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (T, B, 2d) and last states (B, 2d) of a bidirectional LSTM over x (T, B, d)."""
        if not self.backward_from_end:
            return lstm(x, mask)
        index = realign_index(mask)  # the mask keeps its shape: each sequence's valid steps come first
        out_f, last_f = lstm._run(lstm.cells[0], x, mask, lstm.h0[0], reverse=False)
        out_b, last_b = lstm._run(lstm.cells[1], gather_steps(x, index), mask, lstm.h0[1], reverse=False)
        return torch.cat([out_f, gather_steps(out_b, index)], -1), torch.cat([last_f, last_b], -1)

    def forward(self, passage: torch.Tensor, passage_mask: torch.Tensor, question: torch.Tensor,
                question_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) for (T, B) passage and (Q, B) question ids with their 0/1 masks."""
        h, _ = self._encode(self.passage, self.drop(self.embedding(passage)), passage_mask)
        _, q = self._encode(self.question, self.drop(self.embedding(question)), question_mask)
        s = (self.dq(h) * self.dq(q).unsqueeze(0)).sum(-1, keepdim=True)
        m = torch.tanh(self.att_ctx(h, passage_mask) + self.att_q(q).unsqueeze(0) + s)
        scores = self.att_v(m).squeeze(-1).masked_fill(passage_mask == 0, float("-inf"))
        alpha = scores.softmax(0)
        r = (alpha.unsqueeze(-1) * h).sum(0)
        mean = (h * passage_mask.unsqueeze(-1)).sum(0) / passage_mask.sum(0).clamp_min(1).unsqueeze(-1)
        g = torch.tanh(self.out_r(r) + self.out_q(q) + self.out_mean(mean))
        return self.logits(self.drop(g))
