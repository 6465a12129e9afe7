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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rmsnorm import NormLSTM, NormSpec, StepBatchNorm


class Projection(nn.Module):
    """x W (+ b), batch-normalised over the valid rows when asked (statistics over batch and positions)."""

    def __init__(self, d_in: int, d_out: int, bias: bool, batch_norm: bool):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=bias)
        self.norm = StepBatchNorm(d_out, max_steps=1) if batch_norm else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.linear(x)
        if self.norm is None:
            return y
        flat = y.reshape(-1, y.shape[-1])
        return self.norm(flat, 0, None if mask is None else mask.reshape(-1)).view_as(y)


class AttentiveReader(nn.Module):
    def __init__(self, vocab: int, dim: int, norm: NormSpec, project_norm: bool = False, dropout: float = 0.5):
        super().__init__()
        d = dim
        self.embedding = nn.Embedding(vocab, d, padding_idx=0)
        self.passage = NormLSTM(d, d, norm, bidirectional=True)
        self.question = NormLSTM(d, d, norm, bidirectional=True)
        self.att_ctx = Projection(2 * d, d, bias=True, batch_norm=project_norm)
        self.att_q = Projection(2 * d, d, bias=False, batch_norm=project_norm)
        self.dq = nn.Linear(2 * d, d, bias=False)
        self.att_v = nn.Linear(d, 1)
        self.out_r = Projection(2 * d, d, bias=True, batch_norm=project_norm)
        self.out_q = Projection(2 * d, d, bias=False, batch_norm=project_norm)
        self.out_mean = Projection(2 * d, d, bias=False, batch_norm=project_norm)
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

    def forward(self, passage: torch.Tensor, passage_mask: torch.Tensor, question: torch.Tensor,
                question_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) for (T, B) passage and (Q, B) question ids with their 0/1 masks."""
        h, _ = self.passage(self.drop(self.embedding(passage)), passage_mask)
        _, q = self.question(self.drop(self.embedding(question)), question_mask)
        s = (self.dq(h) * self.dq(q).unsqueeze(0)).sum(-1, keepdim=True)
        m = torch.tanh(self.att_ctx(h, passage_mask) + self.att_q(q).unsqueeze(0) + s)
        scores = self.att_v(m).squeeze(-1).masked_fill(passage_mask == 0, float("-inf"))
        alpha = scores.softmax(0)
        r = (alpha.unsqueeze(-1) * h).sum(0)
        mean = (h * passage_mask.unsqueeze(-1)).sum(0) / passage_mask.sum(0).clamp_min(1).unsqueeze(-1)
        g = torch.tanh(self.out_r(r) + self.out_q(q) + self.out_mean(mean))
        return self.logits(self.drop(g))
