"""Transformer base for translation (the paper's Table 4, after bzhangGo/zero), with any norm of the registry
in either place: post-norm as the paper ran it, x = N(x + F(x)), no final norm; or pre-norm, as current models
place it, x = x + F(N(x)), with a final norm on each stack. Attention through torch's
scaled_dot_product_attention. `init="glorot"` initialises as zero does (Glorot-uniform weights, zero biases);
`embedding_bias=True` adds zero's embedding bias, one vector shared by both sides. Inputs and logits are
time-major (T, B), like the RNN translation task's batches, so the data, beam searches and BLEU of
`experiments.translation` serve both."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from experiments.translation.data import PAD
from rmsnorm import NormSpec


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sinusoidal positions: sin on even features, cos on odd (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table


class Attention(nn.Module):
    """Multi-head attention; q from x, k and v from `memory` (x itself for self-attention)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model width {dim} does not divide into {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x, memory, key_ok: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        return self.attend(x, self.kv(memory), key_ok, causal)

    def attend(self, x, kv: torch.Tensor, key_ok: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Attention of x over keys and values already projected: kv = self.kv(memory), (B, S, 2D)."""
        q = self._split(self.q(x))
        k, v = (self._split(t) for t in kv.chunk(2, dim=-1))
        mask = None if key_ok is None else key_ok[:, None, None, :]  # (B, 1, 1, S): True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.inner, self.outer, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.drop(F.relu(self.inner(x))))


class Residual(nn.Module):
    """One sublayer with its norm: post x -> N(x + drop(F(x))), pre x -> x + drop(F(N(x)))."""

    def __init__(self, dim: int, norm: NormSpec, pre: bool, dropout: float):
        super().__init__()
        self.norm, self.pre, self.drop = norm.build(dim), pre, nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        if self.pre:
            return x + self.drop(sublayer(self.norm(x)))
        return self.norm(x + self.drop(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, dropout, norm: NormSpec, pre: bool):
        super().__init__()
        self.attn, self.ff = Attention(dim, heads, dropout), FeedForward(dim, hidden, dropout)
        self.res_attn, self.res_ff = Residual(dim, norm, pre, dropout), Residual(dim, norm, pre, dropout)

    def forward(self, x, key_ok):
        x = self.res_attn(x, lambda h: self.attn(h, h, key_ok))
        return self.res_ff(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, dropout, norm: NormSpec, pre: bool):
        super().__init__()
        self.self_attn, self.cross = Attention(dim, heads, dropout), Attention(dim, heads, dropout)
        self.ff = FeedForward(dim, hidden, dropout)
        self.res_self, self.res_cross, self.res_ff = (Residual(dim, norm, pre, dropout) for _ in range(3))

    def forward(self, x, memory, key_ok):
        x = self.res_self(x, lambda h: self.self_attn(h, h, causal=True))
        x = self.res_cross(x, lambda h: self.cross(h, memory, key_ok))
        return self.res_ff(x, self.ff)

    def step(self, x, past_kv, cross_kv, key_ok):
        """forward for one new position x (B, 1, D) after a prefix whose self-attention keys and values are
        past_kv (B, T, 2D), against the memory's cross_kv = self.cross.kv(memory) (B, S, 2D): (output, the new
        position's self-attention kv (B, 1, 2D)). The new position attends to all of the prefix and itself, so no
        causal mask (torch's is_causal aligns a 1-row mask to the first key)."""
        new_kv = []

        def self_attention(h):
            new_kv.append(self.self_attn.kv(h))
            return self.self_attn.attend(h, torch.cat([past_kv, new_kv[0]], dim=1))

        x = self.res_self(x, self_attention)
        x = self.res_cross(x, lambda h: self.cross.attend(h, cross_kv, key_ok))
        return self.res_ff(x, self.ff), new_kv[0]


def glorot_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """U(+-sqrt(6 / (fan_in + fan_out))): TF's variance_scaling(1.0, fan_avg, uniform), zero's
    `uniform_unit_scaling` at gain 1; the fans given, since zero's matrix may be a fusion of ours."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def glorot_attention_(attn: Attention, fused_qkv: bool) -> None:
    """zero's self-attention maps q, k and v with one (d, 3d) matrix (func.py `qkv_map`), so each of them
    is drawn at that matrix's bound; its cross-attention has three (d, d) ones (`q_map`, `k_map`, `v_map`)."""
    dim = attn.q.in_features
    fan_out = 3 * dim if fused_qkv else dim
    glorot_(attn.q.weight, dim, fan_out)
    glorot_(attn.kv.weight, dim, fan_out)
    glorot_(attn.out.weight, dim, dim)
    for linear in (attn.q, attn.kv, attn.out):
        nn.init.zeros_(linear.bias)


class Transformer(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, hidden: int, enc_layers: int, dec_layers: int,
                 dropout: float, norm: NormSpec, position: str = "post", max_len: int = 1024,
                 init: str = "torch", embedding_bias: bool = False):
        super().__init__()
        if position not in ("post", "pre"):
            raise ValueError(f"task.model.norm_position={position}: use post (the paper) or pre")
        if init not in ("torch", "glorot"):
            raise ValueError(f"task.model.init={init}: use glorot (zero) or torch (nn.Linear's default)")
        pre = position == "pre"
        self.dim = dim
        self.src_emb = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.tgt_emb = nn.Embedding(vocab, dim, padding_idx=PAD)  # also the output projection
        for emb in (self.src_emb, self.tgt_emb):
            nn.init.normal_(emb.weight, 0.0, dim ** -0.5)
            with torch.no_grad():
                emb.weight[PAD].zero_()
        self.register_buffer("positions", sinusoids(max_len, dim), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, hidden, dropout, norm, pre) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, heads, hidden, dropout, norm, pre) for _ in range(dec_layers))
        # pre-norm leaves each stack's output unnormalised: a final norm, as pre-norm models have
        self.enc_norm = norm.build(dim) if pre else nn.Identity()
        self.dec_norm = norm.build(dim) if pre else nn.Identity()
        # zero (models/transformer.py): `bias`, added to the scaled embeddings before the positions; one variable
        # for both sides (the encoder's and decoder's get_variable("bias") share a scope), drawn by the model's
        # initializer: Glorot-uniform on a (d,) shape is U(+-sqrt(3 / d))
        self.emb_bias = nn.Parameter(torch.zeros(dim)) if embedding_bias else None
        if init == "glorot":
            self._glorot()

    def _glorot(self) -> None:
        """zero's initialisation at `initializer=uniform_unit_scaling, initializer_gain=1`: every linear weight
        Glorot-uniform, every linear bias 0 (func.linear); the embeddings keep N(0, d^-0.5) (their own
        initializer in zero too), the norms 1 and 0."""
        for layer in self.encoder:
            glorot_attention_(layer.attn, fused_qkv=True)
        for layer in self.decoder:
            glorot_attention_(layer.self_attn, fused_qkv=True)
            glorot_attention_(layer.cross, fused_qkv=False)
        for layer in (*self.encoder, *self.decoder):
            for linear in (layer.ff.inner, layer.ff.outer):
                glorot_(linear.weight, linear.in_features, linear.out_features)
                nn.init.zeros_(linear.bias)
        if self.emb_bias is not None:
            glorot_(self.emb_bias, self.dim, self.dim)

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(T, B) ids -> (B, T, D): scaled by sqrt(D), plus the embedding bias if any, plus positions (from
        `start` on: the incremental decoder's one new position is the prefix length)."""
        ids = ids.t()
        x = emb(ids) * math.sqrt(self.dim)
        if self.emb_bias is not None:
            x = x + self.emb_bias
        return self.drop(x + self.positions[start: start + ids.shape[1]])

    def encode_memory(self, src: torch.Tensor, src_mask: torch.Tensor):
        key_ok = src_mask.t().bool()
        x = self._embed(self.src_emb, src)
        for layer in self.encoder:
            x = layer(x, key_ok)
        return self.enc_norm(x), key_ok

    def decode_logits(self, tgt_in: torch.Tensor, memory: torch.Tensor, key_ok: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits for (T, B) target prefixes."""
        x = self._embed(self.tgt_emb, tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, key_ok)
        return self.dec_norm(x) @ self.tgt_emb.weight.t()

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits (T, B, V) for every target position given the previous gold token (tgt_in starts with BOS)."""
        memory, key_ok = self.encode_memory(src, src_mask)
        return self.decode_logits(tgt_in, memory, key_ok).transpose(0, 1)

    # ---- the interface of experiments.translation.beam -----------------------------------------------------
    # With `kv_cache` (the default) the state is, per hypothesis, every decoder layer's self-attention keys and
    # values of the prefix so far, one tensor (B, T, layers * 2D) (layer i's kv projection in features
    # [2Di, 2D(i + 1))), so the searches' `state[origin]` and `repeat_interleave(beam, 0)` reorder it as they do
    # the RNN's state; pctx holds the cross-attention keys and values of the memory, (S, B, layers * 2D),
    # projected once in `encode`; each step runs the decoder on the newest position only. Without it the state
    # is the prefix of token ids and each step decodes the whole prefix again (`step_log_probs_full`): the
    # reference the cache is tested against.
    kv_cache: bool = True

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor):
        memory, _ = self.encode_memory(src, src_mask)
        if not self.kv_cache:
            prefix = torch.zeros(src.shape[1], 0, dtype=torch.long, device=src.device)
            return prefix, memory.transpose(0, 1), memory.new_zeros(src.shape[0], src.shape[1], 0)
        cross_kv = torch.cat([layer.cross.kv(memory) for layer in self.decoder], dim=-1)
        past_kv = memory.new_zeros(src.shape[1], 0, cross_kv.shape[-1])
        return past_kv, memory.transpose(0, 1), cross_kv.transpose(0, 1)

    def step_log_probs(self, last: torch.Tensor, state: torch.Tensor, ctx: torch.Tensor, pctx: torch.Tensor,
                       src_mask: torch.Tensor):
        """Log-probabilities (B, V) of the next token after the state's prefix + last, and the new state; the
        state `encode` gave (a float kv cache or a prefix of ids) says which way."""
        if not state.is_floating_point():
            return self.step_log_probs_full(last, state, ctx, pctx, src_mask)
        past = state
        x = self._embed(self.tgt_emb, last.unsqueeze(0), start=past.shape[1])  # (B, 1, D) at position T
        key_ok = src_mask.t().bool()
        cross = pctx.transpose(0, 1)
        width = 2 * self.dim
        new_kv = []
        for i, layer in enumerate(self.decoder):
            part = slice(i * width, (i + 1) * width)
            x, kv = layer.step(x, past[..., part], cross[..., part], key_ok)
            new_kv.append(kv)
        logits = self.dec_norm(x[:, 0]) @ self.tgt_emb.weight.t()
        return F.log_softmax(logits, dim=-1), torch.cat([past, torch.cat(new_kv, dim=-1)], dim=1)

    def step_log_probs_full(self, last: torch.Tensor, prefix: torch.Tensor, ctx: torch.Tensor, _unused,
                            src_mask: torch.Tensor):
        """Without a cache: the whole prefix + last decoded again, O(T^2) over a search; the state is the prefix."""
        prefix = torch.cat([prefix, last.unsqueeze(1)], dim=1)
        logits = self.decode_logits(prefix.t(), ctx.transpose(0, 1), src_mask.t().bool())
        return F.log_softmax(logits[:, -1], dim=-1), prefix
