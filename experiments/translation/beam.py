"""Batched beam searches: all sentences and all beams advance together as one (B*K) batch.

`beam_search` is Nematus' (the RNN translation task): a beam that emits EOS is frozen: from then on it can
only extend with PAD at no cost, so its score stays and it keeps its place until every beam of its sentence is
done. Hypotheses are ranked by log-probability divided by length ** alpha at the end.

`zero_beam_search` is bzhangGo/zero's (search.py, the Transformer's under preset=paper): GNMT's length penalty
((5 + length) / 6) ** alpha inside the search, 2K candidates a step, finished hypotheses kept apart from the K
alive ones, no EOS at the first step, hypotheses up to source length + `extra_len`.
"""

from __future__ import annotations

import torch

from experiments.translation.data import BOS, EOS, PAD


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_mask: torch.Tensor, beam: int, max_len: int,
                alpha: float = 1.0) -> list[list[int]]:
    """Token ids (without BOS/EOS) of the best hypothesis for each sentence of the (S, B) batch.

    A sentence whose every beam has emitted EOS would only carry them on with PAD at no cost, which changes
    neither its scores nor its lengths: it is settled then and leaves the batch, so the steps after it cost
    only what the sentences still open need (a few that never end would otherwise keep the whole batch going
    to max_len)."""
    batch = src.shape[1]
    state, ctx, pctx = model.encode(src, src_mask)
    expand = lambda t, dim: t.repeat_interleave(beam, dim=dim)  # noqa: E731
    state, ctx, pctx, mask = expand(state, 0), expand(ctx, 1), expand(pctx, 1), expand(src_mask, 1)

    scores = torch.full((batch, beam), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    tokens = torch.full((batch * beam, 1), BOS, dtype=torch.long, device=src.device)
    lengths = torch.zeros(batch * beam, device=src.device)
    finished = torch.zeros(batch * beam, dtype=torch.bool, device=src.device)
    open_ = torch.arange(batch, device=src.device)  # the original index of each sentence still searched
    best: list[list[int]] = [[] for _ in range(batch)]

    def settle(which: torch.Tensor) -> None:
        """Write the best hypothesis of the sentences `which` (a mask over the open ones) into `best`."""
        n = len(open_)
        normalised = (scores.view(-1) / lengths.clamp_min(1) ** alpha).view(n, beam)
        rows = (normalised.argmax(1) + torch.arange(n, device=src.device) * beam)[which]
        for index, ids in zip(open_[which].tolist(), _until_eos(tokens[rows, 1:]), strict=True):
            best[index] = ids

    for _ in range(max_len):
        n = len(open_)
        log_probs, new_state = model.step_log_probs(tokens[:, -1], state, ctx, pctx, mask)
        vocab = log_probs.shape[-1]
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[:, PAD] = 0.0
        log_probs = torch.where(finished.unsqueeze(1), frozen, log_probs)
        total = (scores.view(-1, 1) + log_probs).view(n, beam * vocab)
        scores, flat = total.topk(beam, dim=1)
        origin = (flat // vocab + torch.arange(n, device=src.device).unsqueeze(1) * beam).view(-1)
        word = (flat % vocab).view(-1)
        tokens = torch.cat([tokens[origin], word.unsqueeze(1)], dim=1)
        was_finished = finished[origin]
        lengths = lengths[origin] + (~was_finished).float()
        finished = was_finished | (word == EOS)
        done = finished.view(n, beam).all(1)
        ended = int(done.sum())  # one read of the device per step, as the search always had
        if ended == n:
            settle(done)
            return best
        if ended:
            settle(done)
            keep = ~done
            rows = keep.repeat_interleave(beam)
            origin, tokens, lengths, finished = origin[rows], tokens[rows], lengths[rows], finished[rows]
            ctx, pctx, mask = ctx[:, rows], pctx[:, rows], mask[:, rows]
            scores, open_ = scores[keep], open_[keep]
        state = new_state[origin]
    settle(torch.ones(len(open_), dtype=torch.bool, device=src.device))
    return best


def _until_eos(rows: torch.Tensor) -> list[list[int]]:
    """Each row's token ids up to its first EOS or PAD."""
    results = []
    for row in rows.tolist():
        out = []
        for tok in row:
            if tok in (EOS, PAD):
                break
            out.append(tok)
        results.append(out)
    return results


@torch.no_grad()
def zero_beam_search(model, src: torch.Tensor, src_mask: torch.Tensor, beam: int, extra_len: int = 50,
                     alpha: float = 0.6) -> list[list[int]]:
    """Token ids (without BOS/EOS) of the best hypothesis for each sentence of the (S, B) batch, as zero's
    search.py finds it. Each step scores the alive beams' extensions by log-probability / lp(t + 1), lp(n) =
    ((5 + n) / 6) ** alpha, and keeps the best 2K; of those, the K best without EOS stay alive (their
    log-probabilities carried on) and the ones ending in EOS compete with the finished so far for K finished
    places. A sentence's candidates count as finished from step source length (its EOS included) + extra_len
    on; the search stops when that step is reached for the longest source, or when for every sentence its
    worst finished score beats the best alive log-probability over the largest penalty. The answer is the best
    finished hypothesis, or the best alive one for a sentence with none finished."""
    batch, k = src.shape[1], beam
    device = src.device
    limit = src_mask.sum(0).long() + extra_len  # zero: max_target_length = source_length + decode_length
    state, ctx, pctx = model.encode(src, src_mask)
    expand = lambda t, dim: t.repeat_interleave(k, dim=dim)  # noqa: E731
    state, ctx, pctx, mask = expand(state, 0), expand(ctx, 1), expand(pctx, 1), expand(src_mask, 1)
    rows = torch.arange(batch, device=device).unsqueeze(1)
    penalty = lambda n: ((5.0 + n) / 6.0) ** alpha  # noqa: E731

    alive_log_probs = torch.full((batch, k), float("-inf"), device=device)
    alive_log_probs[:, 0] = 0.0  # all beams start identical: keep one alive
    alive_seq = torch.full((batch, k, 1), BOS, dtype=torch.long, device=device)
    fin_seq = torch.full((batch, k, 1), PAD, dtype=torch.long, device=device)
    fin_scores = torch.full((batch, k), float("-inf"), device=device)
    fin_flags = torch.zeros(batch, k, dtype=torch.bool, device=device)

    for time in range(int(limit.max())):
        # zero's _not_finished: stop once no alive hypothesis can beat any sentence's worst finished one
        best_alive = alive_log_probs[:, 0] / penalty(limit.float())
        worst_fin = torch.where(fin_flags, fin_scores, torch.zeros_like(fin_scores)).min(1).values
        worst_fin = torch.where(fin_flags.any(1), worst_fin, torch.full_like(worst_fin, float("-inf")))
        if bool((worst_fin > best_alive).all()):
            break

        log_probs, new_state = model.step_log_probs(alive_seq[:, :, -1].reshape(-1), state, ctx, pctx, mask)
        vocab = log_probs.shape[-1]
        if time == 0:  # zero forbids EOS at the first step
            log_probs = log_probs.clone()
            log_probs[:, EOS] = float("-inf")
        length_penalty = penalty(time + 1.0)
        scores = (alive_log_probs.unsqueeze(2) + log_probs.view(batch, k, vocab)) / length_penalty
        top_scores, flat = scores.view(batch, k * vocab).topk(2 * k, dim=1)
        origin, word = flat // vocab, flat % vocab
        cand_seq = torch.cat([alive_seq[rows, origin], word.unsqueeze(2)], dim=2)  # (B, 2K, t + 2)
        cand_fin = (word == EOS) | (time >= limit).unsqueeze(1)

        alive_scores, pick = top_scores.masked_fill(cand_fin, float("-inf")).topk(k, dim=1)
        alive_seq = cand_seq[rows, pick]
        state = new_state[(origin[rows, pick] + rows * k).view(-1)]
        alive_log_probs = alive_scores * length_penalty

        fin_seq = torch.cat([fin_seq, torch.full((batch, k, 1), PAD, dtype=torch.long, device=device)], dim=2)
        pool_scores = torch.cat([fin_scores, top_scores.masked_fill(~cand_fin, float("-inf"))], dim=1)
        fin_scores, pick = pool_scores.topk(k, dim=1)
        fin_flags = torch.cat([fin_flags, cand_fin], dim=1)[rows, pick]
        fin_seq = torch.cat([fin_seq, cand_seq], dim=1)[rows, pick]

    best = torch.where(fin_flags.any(1).view(-1, 1), fin_seq[:, 0], alive_seq[:, 0])
    return _until_eos(best[:, 1:])
