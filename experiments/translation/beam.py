"""Batched beam search for RNNSearch: all sentences and all beams advance together as one (B*K) batch.

A beam that emits EOS is frozen: from then on it can only extend with PAD at no cost, so its score stays
and it keeps its place until every beam of its sentence is done. Hypotheses are ranked by log-probability
divided by length ** alpha.
"""

from __future__ import annotations

import torch

from experiments.translation.data import BOS, EOS, PAD


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_mask: torch.Tensor, beam: int, max_len: int,
                alpha: float = 1.0) -> list[list[int]]:
    """Token ids (without BOS/EOS) of the best hypothesis for each sentence of the (S, B) batch."""
    batch = src.shape[1]
    state, ctx, pctx = model.encode(src, src_mask)
    expand = lambda t, dim: t.repeat_interleave(beam, dim=dim)  # noqa: E731
    state, ctx, pctx, mask = expand(state, 0), expand(ctx, 1), expand(pctx, 1), expand(src_mask, 1)

    scores = torch.full((batch, beam), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    tokens = torch.full((batch * beam, 1), BOS, dtype=torch.long, device=src.device)
    lengths = torch.zeros(batch * beam, device=src.device)
    finished = torch.zeros(batch * beam, dtype=torch.bool, device=src.device)

    for _ in range(max_len):
        log_probs, new_state = model.step_log_probs(tokens[:, -1], state, ctx, pctx, mask)
        vocab = log_probs.shape[-1]
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[:, PAD] = 0.0
        log_probs = torch.where(finished.unsqueeze(1), frozen, log_probs)
        total = (scores.view(-1, 1) + log_probs).view(batch, beam * vocab)
        scores, flat = total.topk(beam, dim=1)
        origin = (flat // vocab + torch.arange(batch, device=src.device).unsqueeze(1) * beam).view(-1)
        word = (flat % vocab).view(-1)
        tokens = torch.cat([tokens[origin], word.unsqueeze(1)], dim=1)
        state = new_state[origin]
        was_finished = finished[origin]
        lengths = lengths[origin] + (~was_finished).float()
        finished = was_finished | (word == EOS)
        if finished.all():
            break

    normalised = (scores.view(-1) / lengths.clamp_min(1) ** alpha).view(batch, beam)
    best = normalised.argmax(1) + torch.arange(batch, device=src.device) * beam
    results = []
    for row in tokens[best, 1:].tolist():
        out = []
        for tok in row:
            if tok in (EOS, PAD):
                break
            out.append(tok)
        results.append(out)
    return results
