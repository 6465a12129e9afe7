"""The Transformer task: its layers against torch.nn's at norm=layernorm (post- and pre-norm), overfitting a
handful of pairs to BLEU > 90 through beam search, the schedule, and the norm placements."""

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
    from experiments.core.config import typed_task_config
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
