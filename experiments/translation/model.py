"""Nematus' RNNSearch: a bidirectional GRU encoder and a conditional GRU decoder with attention.

    encoder:  ctx = [GRU_fwd(E x); GRU_bwd(E x)]                                  (S, B, 2H)
    init:     s_0 = tanh(N(W_i mean(ctx) + b_i))
    decoder:  s'  = GRU_1(E y_{t-1}, s_{t-1})
              a   = softmax_j(v . tanh(N(W_c ctx_j + b_c) + N(U_a s')))           attention
              c   = sum_j a_j ctx_j
              s_t = GRU_2(c, s')
    output:   logits = W_o tanh(N(W_s s_t) + N(W_p E y_{t-1}) + N(W_x c))

N is the chosen norm: inside every GRU (four per cell), on the attention projections and on every
feed-forward pre-activation, where Nematus put layer normalisation. Init: N(0, 0.01), orthogonal for
square matrices, as the paper states; `init_mean` moves the centre of the normal draw (Fig. 4: 0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmsnorm import NormGRU, NormGRUCell, NormSpec


def _ff_norm(norm: NormSpec, dim: int) -> nn.Module:
    # each norm with its usual shift: none for the RMS family, a bias for LayerNorm (its mean subtraction
    # removes the bias of the linear layer before it)
    return norm.build(dim)


class RNNSearch(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, emb: int, hidden: int, norm: NormSpec, dropout: float = 0.0,
                 init_mean: float = 0.0, gru2_bias_on_state: bool = True):
        super().__init__()
        H = hidden
        self.init_mean = init_mean
        self.hidden = hidden
        self.src_emb = nn.Embedding(src_vocab, emb, padding_idx=0)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb, padding_idx=0)
        self.encoder = NormGRU(emb, H, norm, bidirectional=True)
        self.init_ff, self.init_norm = nn.Linear(2 * H, H), _ff_norm(norm, H)
        self.cell1 = NormGRUCell(emb, H, norm)
        self.att_ctx, self.att_ctx_norm = nn.Linear(2 * H, 2 * H), _ff_norm(norm, 2 * H)
        self.att_state, self.att_state_norm = nn.Linear(H, 2 * H, bias=False), _ff_norm(norm, 2 * H)
        self.att_v = nn.Linear(2 * H, 1)
        # Nematus' GRU2 adds its bias on the state side (U h + b, inside the norm, under the reset gate)
        self.cell2 = NormGRUCell(2 * H, H, norm, bias_on_state=gru2_bias_on_state)
        self.out_state, self.out_state_norm = nn.Linear(H, emb), _ff_norm(norm, emb)
        self.out_prev, self.out_prev_norm = nn.Linear(emb, emb), _ff_norm(norm, emb)
        self.out_ctx, self.out_ctx_norm = nn.Linear(2 * H, emb), _ff_norm(norm, emb)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(emb, tgt_vocab)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2 and "weight_hh" not in name:  # GRU hidden blocks: orthogonal, in NormGRUCell
                if p.shape[0] == p.shape[1]:
                    nn.init.orthogonal_(p)
                else:  # Fig. 4 moves the centre of this draw (init_mean 0.2); orthogonal blocks stay as they are
                    nn.init.normal_(p, mean=self.init_mean, std=0.01)
            elif "norm" in name and p.dim() == 1:
                nn.init.ones_(p)

    # ---- encoder and one decoder step (beam search drives these) -----------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor):
        ctx, _ = self.encoder(self.src_emb(src), src_mask)
        mean = (ctx * src_mask.unsqueeze(-1)).sum(0) / src_mask.sum(0).unsqueeze(-1)
        state = torch.tanh(self.init_norm(self.init_ff(mean)))
        return state, ctx, self.att_ctx_norm(self.att_ctx(ctx))

    def attend(self, state: torch.Tensor, ctx: torch.Tensor, pctx: torch.Tensor, src_mask: torch.Tensor):
        energy = self.att_v(torch.tanh(pctx + self.att_state_norm(self.att_state(state)))).squeeze(-1)
        alpha = energy.masked_fill(src_mask == 0, float("-inf")).softmax(0)  # (S, B)
        return (alpha.unsqueeze(-1) * ctx).sum(0)

    def decoder_step(self, x_gates, x_cand, state, ctx, pctx, src_mask):
        s1 = self.cell1.step(x_gates, x_cand, state)
        context = self.attend(s1, ctx, pctx, src_mask)
        return self.cell2(context, s1), context

    def readout(self, states: torch.Tensor, prev_emb: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.out_state_norm(self.out_state(states)) + self.out_prev_norm(self.out_prev(prev_emb))
                            + self.out_ctx_norm(self.out_ctx(contexts)))
        return self.out_proj(self.dropout(hidden))

    # ---- teacher-forced training ---------------------------------------------------------------------------
    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits (T, B, V) for every target position given the previous gold token (tgt_in starts with BOS)."""
        state, ctx, pctx = self.encode(src, src_mask)
        prev_emb = self.tgt_emb(tgt_in)
        x_gates, x_cand = (t.unbind(0) for t in self.cell1.project_inputs(prev_emb))
        states, contexts = [], []
        for t in range(tgt_in.shape[0]):
            state, context = self.decoder_step(x_gates[t], x_cand[t], state, ctx, pctx, src_mask)
            states.append(state)
            contexts.append(context)
        return self.readout(torch.stack(states), prev_emb, torch.stack(contexts))

    def step_log_probs(self, prev_tokens, state, ctx, pctx, src_mask):
        """One decoding step for beam search: log-probabilities (N, V) and the new state."""
        prev_emb = self.tgt_emb(prev_tokens)
        state, context = self.decoder_step(*self.cell1.project_inputs(prev_emb), state, ctx, pctx, src_mask)
        return F.log_softmax(self.readout(state, prev_emb, context), dim=-1), state
