"""The Transformer task: its layers against torch.nn's at norm=layernorm (post- and pre-norm), overfitting a
handful of pairs to BLEU > 90 through beam search, the schedule, and the norm placements."""

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


@pytest.mark.parametrize("norm, position", [("rmsnorm", "post"), ("rmsnorm", "pre"), ("layernorm", "pre")])
def test_a_handful_of_pairs_overfits_to_bleu_above_90_with_beam_search(norm, position):
    from sacrebleu.metrics import BLEU

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
    model = Transformer(vocab, 32, 4, 64, 2, 2, 0.0, NormSpec(norm), position)
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
