"""The Transformer task: its layers against torch.nn's at norm=layernorm (post- and pre-norm), overfitting a
handful of pairs to BLEU > 90 through beam search, the schedule, and the norm placements."""

import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from experiments.transformer.model import DecoderLayer, EncoderLayer, Transformer
from experiments.translation.beam import beam_search
from experiments.translation.data import BOS, EOS, PAD
from rmsnorm import NormSpec

DIM, HEADS, FF = 16, 4, 32


def _copy_attention(ours, theirs: nn.MultiheadAttention):
    with torch.no_grad():
        w, b = theirs.in_proj_weight, theirs.in_proj_bias
        ours.q.weight.copy_(w[:DIM]), ours.q.bias.copy_(b[:DIM])
        ours.kv.weight.copy_(w[DIM:]), ours.kv.bias.copy_(b[DIM:])
        ours.out.weight.copy_(theirs.out_proj.weight), ours.out.bias.copy_(theirs.out_proj.bias)


def _copy_ff_and_norms(ours, theirs, residuals, norms):
    with torch.no_grad():
        ours.ff.inner.weight.copy_(theirs.linear1.weight), ours.ff.inner.bias.copy_(theirs.linear1.bias)
        ours.ff.outer.weight.copy_(theirs.linear2.weight), ours.ff.outer.bias.copy_(theirs.linear2.bias)
        for res, norm in zip(residuals, norms, strict=True):
            res.norm.weight.copy_(norm.weight), res.norm.bias.copy_(norm.bias)


@pytest.mark.parametrize("position", ["post", "pre"])
def test_layers_equal_torch_nn_at_layernorm(position):
    torch.manual_seed(0)
    spec = NormSpec("layernorm", eps=1e-5)
    pre = position == "pre"
    kw = dict(dim_feedforward=FF, dropout=0.0, batch_first=True, norm_first=pre, dtype=torch.float64)
    ref_enc, ref_dec = nn.TransformerEncoderLayer(DIM, HEADS, **kw), nn.TransformerDecoderLayer(DIM, HEADS, **kw)
    for module in (ref_enc, ref_dec):
        for n in module.modules():
            if isinstance(n, nn.LayerNorm):  # non-trivial gains and shifts, so a swapped norm would show
                nn.init.normal_(n.weight, 1.0, 0.3), nn.init.normal_(n.bias, 0.0, 0.3)
    enc = EncoderLayer(DIM, HEADS, FF, 0.0, spec, pre).double()
    dec = DecoderLayer(DIM, HEADS, FF, 0.0, spec, pre).double()
    _copy_attention(enc.attn, ref_enc.self_attn)
    _copy_ff_and_norms(enc, ref_enc, [enc.res_attn, enc.res_ff], [ref_enc.norm1, ref_enc.norm2])
    _copy_attention(dec.self_attn, ref_dec.self_attn)
    _copy_attention(dec.cross, ref_dec.multihead_attn)
    _copy_ff_and_norms(dec, ref_dec, [dec.res_self, dec.res_cross, dec.res_ff],
                       [ref_dec.norm1, ref_dec.norm2, ref_dec.norm3])

    src, tgt = torch.randn(3, 7, DIM, dtype=torch.float64), torch.randn(3, 5, DIM, dtype=torch.float64)
    key_ok = torch.ones(3, 7, dtype=torch.bool)
    key_ok[1, 5:] = False  # a padded source sentence
    memory = enc(src, key_ok)
    torch.testing.assert_close(memory, ref_enc(src, src_key_padding_mask=~key_ok))
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    torch.testing.assert_close(dec(tgt, memory, key_ok),
                               ref_dec(tgt, memory, tgt_mask=causal, memory_key_padding_mask=~key_ok))


@pytest.mark.parametrize("norm, position, zero", [("rmsnorm", "post", False), ("rmsnorm", "pre", False),
                                                  ("layernorm", "pre", False), ("rmsnorm", "post", True)])
def test_a_handful_of_pairs_overfits_to_bleu_above_90_with_beam_search(norm, position, zero):
    """zero: with zero's init and embedding bias, decoded by zero's search too."""
    from sacrebleu.metrics import BLEU

    from experiments.translation.beam import zero_beam_search

    torch.manual_seed(0)
    vocab, pairs = 24, 6
    src = [torch.randint(4, vocab, (int(n),)).tolist() for n in torch.randint(4, 8, (pairs,))]
    tgt = [list(reversed(s)) for s in src]  # a task the model must read its source for

    def pad(seqs, bos):
        rows = [([BOS] if bos else []) + s + [EOS] for s in seqs]
        out = torch.full((max(map(len, rows)), len(rows)), PAD)
        for i, r in enumerate(rows):
            out[: len(r), i] = torch.tensor(r)
        return out

    s, t = pad(src, False), pad(tgt, True)
    mask = (s != PAD).float()
    model = Transformer(vocab, 32, 4, 64, 2, 2, 0.0, NormSpec(norm), position,
                        init="glorot" if zero else "torch", embedding_bias=zero)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(s, mask, t[:-1]).flatten(0, 1), t[1:].flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hyps = beam_search(model, s, mask, beam=4, max_len=12, alpha=0.6)
    text = lambda seqs: [" ".join(map(str, x)) for x in seqs]  # noqa: E731
    assert BLEU().corpus_score(text(hyps), [text(tgt)]).score > 90
    if zero:
        hyps = zero_beam_search(model, s, mask, beam=4, extra_len=5, alpha=0.6)
        assert BLEU().corpus_score(text(hyps), [text(tgt)]).score > 90


def test_the_schedule_peaks_at_the_end_of_warm_up():
    from experiments.core.training.config import typed_task_config
    from experiments.transformer.task import TransformerTask
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["task=transformer", "norm=rmsnorm", "preset=smoke", "task.optim.warmup=4",
                       "task.optim.lr=1e-3"])
    task = TransformerTask.for_timing(typed_task_config(TransformerTask.Config, cfg.task), NormSpec("rmsnorm"),
                                      torch.device("cpu"))
    rates = []
    for _ in range(16):
        rates.append(task.optimizer.param_groups[0]["lr"])
        task.optimizer.step()  # no gradients: moves nothing, keeps the scheduler's order of calls
        task.scheduler.step()
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up to the peak at step 4
    assert rates[15] == pytest.approx(1e-3 * (4 / 16) ** 0.5)  # then lr * sqrt(warmup / step)


def test_post_norm_has_no_final_norm_and_pre_norm_has_one():
    post = Transformer(30, 16, 2, 32, 1, 1, 0.0, NormSpec("rmsnorm"), "post")
    pre = Transformer(30, 16, 2, 32, 1, 1, 0.0, NormSpec("rmsnorm"), "pre")
    assert isinstance(post.enc_norm, nn.Identity) and isinstance(post.dec_norm, nn.Identity)
    assert type(pre.enc_norm).__name__ == "RMSNorm" and type(pre.dec_norm).__name__ == "RMSNorm"
    with pytest.raises(ValueError, match="norm_position=middle"):
        Transformer(30, 16, 2, 32, 1, 1, 0.0, NormSpec("rmsnorm"), "middle")


def test_token_batches_cover_every_pair_once_within_the_budget():
    from experiments.core.data.batching import shuffled, token_batches

    lengths = torch.randint(1, 40, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = token_batches(lengths, 200, multiple=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(max(lengths[i] for i in b) * len(b) <= 200 for b in batches)
    assert all(len(b) % 3 == 0 for b in batches[:-1])  # whole groups: every batch splits over 3 processes
    # greedy: the next group would not have fitted
    assert all(lengths[nxt[2]] * (len(b) + 3) > 200 for b, nxt in pairwise(batches) if len(nxt) >= 3)
    order = shuffled(batches, torch.Generator().manual_seed(1))
    assert sorted(map(tuple, order)) == sorted(map(tuple, batches)) and order != batches
    assert token_batches([100, 5], 50) == [[1], [0]]  # a pair over the budget still makes its own batch


def _smoke_task(smoke_data, *extra):
    from experiments.core.training.run import build_task
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["task=transformer", "norm=rmsnorm", "preset=smoke", f"data_dir={smoke_data}", "logger=none",
                       *extra])
    torch.manual_seed(0)
    return build_task(cfg, torch.device("cpu"))


def test_accumulated_micro_batches_give_the_whole_batch_gradient(smoke_data):
    """The loss is the mean over all the batch's target tokens and the gradient its gradient, however the batch
    is split (a mean of the micro-batches' means would weight short sentences up and fail here)."""
    whole = _smoke_task(smoke_data)
    parts = _smoke_task(smoke_data, "task.optim.accumulate=3")
    batch = next(iter(whole.batches(0, 0)))
    loss_whole, loss_parts = whole.train_step(batch), parts.train_step(batch)
    assert loss_parts.item() == pytest.approx(loss_whole.item(), rel=1e-5)
    for (name, a), b in zip(whole.model.named_parameters(), parts.model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    # (not the weights after Adam's first step: it moves each by ~lr whatever the gradient's size, and the key
    # bias's gradient is float noise around 0, since a softmax ignores it)


def test_token_budget_batches_train_and_count_their_steps(smoke_data):
    task = _smoke_task(smoke_data, "task.batch_tokens=300")
    batches = list(task.batches(0, 0))
    assert len(batches) == task.steps_per_epoch
    assert sum(b[0].shape[1] for b in batches) == len(task.train)
    # within the budget, but for a batch of one group of 8 sentences (the unit every batch is made of)
    assert all(b[0].shape[1] == 8 or b[0].shape[0] * b[0].shape[1] <= 300 and b[2].shape[0] * b[2].shape[1] <= 300
               for b in batches)
    assert all(b[0].shape[1] % 8 == 0 for b in batches[:-1]) and any(b[0].shape[1] > 8 for b in batches)
    assert [b[0].shape for b in task.batches(1, 0)] != [b[0].shape for b in batches]  # another order next epoch
    assert torch.isfinite(task.train_step(batches[0]))


def test_a_token_budget_below_the_longest_pair_is_refused(smoke_data):
    from experiments.core.errors import UserError

    with pytest.raises(UserError, match="task.batch_tokens=10 must exceed task.max_len"):
        _smoke_task(smoke_data, "task.batch_tokens=10")


# ---- zero's setting (preset=paper): init, embedding bias, loss, long pairs, beam search -------------------------

def test_glorot_init_draws_zeros_bounds_and_zero_biases():
    """init=glorot: zero's uniform_unit_scaling at gain 1 (TF variance_scaling, fan_avg, uniform) on each
    linear weight, at the bound of zero's own matrix (self-attention's q, k, v are one (d, 3d) map there),
    zero linear biases; embeddings N(0, d^-0.5); the embedding bias U(+-sqrt(3 / d)) (a (d,) variable)."""
    torch.manual_seed(0)
    d, ff = 32, 80
    model = Transformer(50, d, 4, ff, 2, 2, 0.0, NormSpec("rmsnorm"), init="glorot", embedding_bias=True)
    fused, square = (6 / (d + 3 * d)) ** 0.5, (6 / (d + d)) ** 0.5

    def within(w, bound, fill=0.95):  # inside the bound and filling it (a smaller bound would fail the second)
        return w.abs().max() <= bound and w.abs().max() > fill * bound

    for layer in model.encoder:
        assert within(layer.attn.q.weight, fused) and within(layer.attn.kv.weight, fused)
    for layer in model.decoder:
        assert within(layer.self_attn.q.weight, fused) and within(layer.self_attn.kv.weight, fused)
        assert within(layer.cross.q.weight, square) and within(layer.cross.kv.weight, square)
    for layer in (*model.encoder, *model.decoder):
        attn = [layer.attn] if hasattr(layer, "attn") else [layer.self_attn, layer.cross]
        assert all(within(a.out.weight, square) for a in attn)
        assert within(layer.ff.inner.weight, (6 / (d + ff)) ** 0.5)
        assert within(layer.ff.outer.weight, (6 / (d + ff)) ** 0.5)
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(biases) == 2 * (3 + 2) + 2 * (6 + 2) and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    assert within(model.emb_bias, (3 / d) ** 0.5, fill=0.8)  # 32 draws only
    assert model.src_emb.weight[4:].std().item() == pytest.approx(d ** -0.5, rel=0.1)

    torch_init = Transformer(50, d, 4, ff, 2, 2, 0.0, NormSpec("rmsnorm"))  # the demo's: nn.Linear's default
    assert torch_init.emb_bias is None and torch_init.encoder[0].ff.inner.bias.abs().sum() > 0
    assert torch_init.encoder[0].ff.inner.weight.abs().max() <= d ** -0.5


def test_the_embedding_bias_is_one_vector_added_after_the_scaling_on_both_sides():
    torch.manual_seed(0)
    model = Transformer(30, 16, 2, 32, 1, 1, 0.0, NormSpec("rmsnorm"), embedding_bias=True)
    with torch.no_grad():
        model.emb_bias.normal_()
    ids = torch.tensor([[5, 6], [7, 8], [9, PAD]])
    for emb in (model.src_emb, model.tgt_emb):
        expected = emb(ids.t()) * 16 ** 0.5 + model.emb_bias + model.positions[:3]
        torch.testing.assert_close(model._embed(emb, ids), expected)
    assert sum(p is model.emb_bias for p in model.parameters()) == 1


def test_the_sentence_mean_loss_with_zeros_smoothing_equals_a_hand_computation():
    from experiments.transformer.task import Loss, Smoothing, sequence_loss

    torch.manual_seed(0)
    vocab, eps = 6, 0.1
    logits = torch.randn(4, 3, vocab, dtype=torch.float64)
    target = torch.tensor([[4, 5, 3], [5, 3, PAD], [3, PAD, PAD], [PAD, PAD, PAD]])  # 3, 2 and 1 tokens
    n, p = vocab - 1, 1 - eps
    q = eps / n
    entropy = -(p * math.log(p) + n * q * math.log(q))
    sentences = []
    for b in range(3):
        losses = []
        for t in range(4):
            gold = int(target[t, b])
            if gold == PAD:
                continue
            log_p = torch.log_softmax(logits[t, b], -1).tolist()
            smoothed = [p if v == gold else q for v in range(vocab)]
            losses.append(-sum(s * lp for s, lp in zip(smoothed, log_p, strict=True)) - entropy)  # a KL divergence
        sentences.append(sum(losses) / len(losses))
    hand = sum(sentences) / 3
    assert sequence_loss(logits, target, eps, Smoothing.others, Loss.sentence_mean).item() / 3 == pytest.approx(hand)
    # the token mean weights the long sentence up; with smoothing=uniform it is torch's own label smoothing
    torch_mean = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD,
                                             label_smoothing=eps)
    assert sequence_loss(logits, target, eps, Smoothing.uniform, Loss.token_mean).item() / 6 == pytest.approx(
        torch_mean.item())
    assert sequence_loss(logits, target, eps, Smoothing.others, Loss.token_mean).item() / 6 != pytest.approx(hand)


def test_accumulated_micro_batches_give_the_whole_batch_sentence_mean_gradient(smoke_data):
    """loss=sentence_mean counts sentences where token_mean counts tokens: however the batch is split, the step's
    loss is the mean over all its sentences of each one's token mean."""
    from experiments.transformer.task import Loss, Smoothing, sequence_loss

    zero = ["task.optim.loss=sentence_mean", "task.optim.smoothing=others", "task.model.init=glorot",
            "task.model.embedding_bias=true"]
    whole = _smoke_task(smoke_data, *zero)
    parts = _smoke_task(smoke_data, *zero, "task.optim.accumulate=3")
    batch = next(iter(whole.batches(0, 0)))
    with torch.no_grad():
        expected = sequence_loss(whole.model(*batch[:3]), batch[3], whole.cfg.optim.label_smoothing,
                                 Smoothing.others, Loss.sentence_mean) / batch[3].shape[1]
    loss_whole, loss_parts = whole.train_step(batch), parts.train_step(batch)
    assert loss_whole.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss_parts.item() == pytest.approx(loss_whole.item(), rel=1e-5)
    for (name, a), b in zip(whole.model.named_parameters(), parts.model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    assert whole.model.emb_bias.grad.abs().sum() > 0


def test_truncated_cuts_each_sequence_to_its_first_ids():
    from experiments.core.data.batching import Ragged
    from experiments.transformer.task import truncated

    seqs = [[4, 5, 6, 7, 8], [9], [], [10, 11, 12]]
    cut = truncated(Ragged.from_lists(seqs), 3)
    assert [cut[i].tolist() for i in range(len(cut))] == [[4, 5, 6], [9], [], [10, 11, 12]]


def test_long_pairs_are_truncated_not_dropped(smoke_data):
    drop = _smoke_task(smoke_data, "task.max_len=12")  # the smoke pairs have 9 to 23 tokens a side at most
    cut = _smoke_task(smoke_data, "task.max_len=12", "task.long_pairs=truncate")
    every = _smoke_task(smoke_data)
    assert 0 < len(drop.train) < len(cut.train) == len(every.train)
    for i in range(len(cut.train)):
        (s, t), (s_full, t_full) = cut.train.pair(i), every.train.pair(i)
        assert s == s_full[:11] and t == t_full[:11]  # with its EOS each side is at most 12 ids, zero's max_len
    assert max(cut._lengths) == 11 and cut.steps_per_epoch == len(list(cut.batches(0, 0)))
    assert all(b[0].shape[0] <= 12 and b[3].shape[0] <= 12 for b in cut.batches(0, 0))


class _TableModel:
    """A scoring model for beam search: the next token's probabilities looked up by the prefix decoded so far
    (after BOS), in the table the sentence's first source id picks; the state is the prefix."""

    def __init__(self, tables, default):
        self.tables, self.default = tables, default

    def encode(self, src, src_mask):
        return torch.zeros(src.shape[1], 0, dtype=torch.long), src.unsqueeze(-1).float(), src.unsqueeze(-1).float()

    def step_log_probs(self, last, prefix, ctx, _pctx, _mask):
        prefix = torch.cat([prefix, last.unsqueeze(1)], dim=1)
        rows = []
        for row, kind in zip(prefix.tolist(), ctx[0, :, 0].long().tolist(), strict=True):
            probs = dict(self.tables[kind].get(tuple(row[1:]), self.default))
            rows.append([probs.get(v, 1e-6) for v in range(6)])
        return torch.tensor(rows).log().log_softmax(-1), prefix


A, B = 4, 5
# A EOS: log p -1.05 over 2 tokens; B B B EOS: -1.59 over 4. length ** 1 prefers the long one (-0.40 against
# -0.52), GNMT's ((5 + n) / 6) ** 1 the short one (-0.90 against -1.06)
_DIFFER = {(): {A: 0.5, B: 0.4, EOS: 0.05}, (A,): {EOS: 0.7, A: 0.15, B: 0.15},
           (B,): {B: 0.8, EOS: 0.1, A: 0.1}, (B, B): {B: 0.8, EOS: 0.1, A: 0.1}, (B, B, B): {EOS: 0.8, A: 0.2}}
_EOS_FIRST = {(): {EOS: 0.9, B: 0.1}, (B,): {EOS: 0.9, A: 0.1}}
_ENDS = {EOS: 0.9, A: 0.05, B: 0.05}


def _src(*rows):
    out = torch.full((max(map(len, rows)) + 1, len(rows)), PAD)
    for j, r in enumerate(rows):
        out[: len(r) + 1, j] = torch.tensor([*r, EOS])
    return out


def test_zeros_search_and_nematus_pick_different_hypotheses_by_their_length_rules():
    from experiments.translation.beam import zero_beam_search

    model = _TableModel({A: _DIFFER}, _ENDS)
    src = _src([A, A])
    mask = (src != PAD).float()
    assert beam_search(model, src, mask, beam=2, max_len=10, alpha=1.0) == [[B, B, B]]
    assert zero_beam_search(model, src, mask, beam=2, extra_len=50, alpha=1.0) == [[A]]


def test_zeros_search_forbids_eos_first_and_stops_at_source_length_plus_extra():
    from experiments.translation.beam import zero_beam_search

    src = _src([B, A])
    mask = (src != PAD).float()
    eos_first = _TableModel({B: _EOS_FIRST}, _ENDS)
    assert beam_search(eos_first, src, mask, beam=2, max_len=10, alpha=1.0) == [[]]
    assert zero_beam_search(eos_first, src, mask, beam=2, extra_len=50, alpha=1.0) == [[B]]
    endless = _TableModel({B: {}}, {A: 0.5, B: 0.5})
    hyp = zero_beam_search(endless, src, mask, beam=2, extra_len=4, alpha=0.6)[0]
    assert len(hyp) == 3 + 4  # two tokens and EOS, plus 4


def test_zeros_search_gives_each_sentence_of_a_batch_what_it_gives_it_alone():
    from experiments.translation.beam import zero_beam_search

    model = _TableModel({A: _DIFFER, B: _EOS_FIRST}, _ENDS)
    src = _src([A, A, A, A], [B])
    batch = zero_beam_search(model, src, (src != PAD).float(), beam=3, extra_len=5, alpha=1.0)
    alone = [zero_beam_search(model, s, (s != PAD).float(), beam=3, extra_len=5, alpha=1.0)[0]
             for s in (_src([A, A, A, A]), _src([B]))]
    assert batch == alone == [[A], [B]]


def test_the_task_decodes_with_the_search_its_config_names(smoke_data, monkeypatch):
    import experiments.transformer.task as T
    import experiments.translation.task as TT

    calls = []
    monkeypatch.setattr(T, "zero_beam_search", lambda *a, **k: calls.append("zero") or [[] for _ in a[1].T])
    monkeypatch.setattr(TT, "beam_search", lambda *a, **k: calls.append("nematus") or [[] for _ in a[1].T])
    for search in ("zero", "nematus"):
        task = _smoke_task(smoke_data, f"task.decode.search={search}")
        enc = next(iter(task.eval_sets.values()))
        assert len(task.translate(enc.subset(torch.arange(3)))) == 3 and calls[-1] == search


def _random_model(norm, position, vocab=12, layers=2):
    """A small random model, dropout configured but off (eval), zero's init and embedding bias."""
    torch.manual_seed(1)
    model = Transformer(vocab, DIM, HEADS, FF, layers, layers, 0.3, NormSpec(norm), position, init="glorot",
                        embedding_bias=True).eval()
    with torch.no_grad():  # norms with non-trivial gains and shifts
        for module in model.modules():
            for name in ("weight", "bias"):
                param = getattr(module, name, None)
                if "Norm" in type(module).__name__ and isinstance(param, nn.Parameter):
                    param.add_(0.3 * torch.randn_like(param))
    return model


def _random_src(vocab, *lengths):
    """A (S, B) batch of random sentences of the given lengths (EOS included), padded."""
    src = torch.full((max(lengths), len(lengths)), PAD)
    for j, n in enumerate(lengths):
        src[: n - 1, j] = torch.randint(EOS + 1, vocab, (n - 1,))
        src[n - 1, j] = EOS
    return src


@pytest.mark.parametrize("norm, position", [("rmsnorm", "post"), ("rmsnorm", "pre"), ("layernorm", "post"),
                                            ("prmsnorm", "pre")])
@torch.no_grad()
def test_the_kv_cache_gives_the_full_prefix_log_probs_at_every_step_across_reorderings(norm, position):
    """In float64, so the match is to rounding (in float32 pRMSNorm's 1-feature RMS at this width amplifies the
    two paths' different summation orders to 1e-4 on log-probs of -30)."""
    model, beam = _random_model(norm, position).double(), 3
    src = _random_src(12, 7, 4, 9)
    mask = (src != PAD).float()
    expand = lambda t, dim: t.repeat_interleave(beam, dim=dim)  # noqa: E731
    model.kv_cache = False
    prefix, ctx, pctx = model.encode(src, mask)
    model.kv_cache = True
    cache, ctx_c, cross = model.encode(src, mask)
    assert cache.is_floating_point() and cache.shape == (3, 0, 2 * 2 * DIM) and cross.shape == (9, 3, 2 * 2 * DIM)
    torch.testing.assert_close(ctx_c, ctx)
    prefix, cache, ctx, pctx, cross, mask = (expand(prefix, 0), expand(cache, 0), expand(ctx, 1), expand(pctx, 1),
                                             expand(cross, 1), expand(mask, 1))
    last = torch.full((3 * beam,), BOS)
    for step in range(8):
        full, prefix = model.step_log_probs(last, prefix, ctx, pctx, mask)
        cached, cache = model.step_log_probs(last, cache, ctx, cross, mask)
        assert cache.shape == (3 * beam, step + 1, 2 * 2 * DIM) and prefix.shape == (3 * beam, step + 1)
        # the no-cache path is the decoder's last position over the whole prefix
        reference = model.decode_logits(prefix.t(), ctx.transpose(0, 1), mask.t().bool())[:, -1].log_softmax(-1)
        torch.testing.assert_close(full, reference)
        torch.testing.assert_close(cached, full)
        # the searches' reordering: each sentence's surviving hypotheses, some twice, picked by index
        origin = (torch.randint(0, beam, (3, beam)) + torch.arange(3).unsqueeze(1) * beam).view(-1)
        prefix, cache = prefix[origin], cache[origin]
        last = torch.randint(0, 12, (3 * beam,))  # PAD and EOS too, as frozen beams feed them


@pytest.mark.parametrize("norm, position", [("rmsnorm", "post"), ("layernorm", "pre")])
def test_both_searches_decode_the_same_with_and_without_the_kv_cache(norm, position):
    from experiments.translation.beam import zero_beam_search

    model = _random_model(norm, position, vocab=10)
    src = _random_src(10, 6, 3, 8, 5)
    mask = (src != PAD).float()
    outs = {}
    for cache in (False, True):
        model.kv_cache = cache
        outs[cache] = (beam_search(model, src, mask, beam=3, max_len=12, alpha=1.0),
                       zero_beam_search(model, src, mask, beam=3, extra_len=4, alpha=0.6))
    assert outs[True] == outs[False]
    hyps = outs[True][0] + outs[True][1]
    assert any(0 < len(h) < 4 for h in hyps) and any(len(h) >= 4 for h in hyps)  # ended by EOS, and long ones
