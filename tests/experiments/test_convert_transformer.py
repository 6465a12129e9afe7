"""rmsnorm.convert_exact on the suite's own pre-norm Transformer (`task.model.norm_position=pre`): the same
translation model with RMSNorms, in the forward pass and in the incremental decoder's steps."""

import pytest
import torch

from experiments.transformer.model import Transformer
from rmsnorm import NormSpec, NotConvertible, RMSNorm, convert_exact
from rmsnorm.convert import CentredEmbedding
from tests.rmsnorm.test_convert import TOLERANCE, _randomise


def _batch():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(3, 30, (7, 3), generator=g), torch.randint(3, 30, (6, 3), generator=g)
    mask = torch.ones(7, 3)
    mask[5:, 0] = 0  # the first sentence is shorter: padded keys
    return src, mask, tgt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_pre_norm_transformer_converts_exactly_forward_and_step_by_step(dtype):
    model = _randomise(Transformer(30, 16, 2, 32, 2, 2, 0.1, NormSpec("layernorm"), "pre", embedding_bias=True))
    model = model.to(dtype).eval()
    src, mask, tgt = _batch()
    converted, report = convert_exact(model, (src, mask, tgt))
    converted.eval()
    assert len(report.converted) == 12 and all(isinstance(converted.get_submodule(c.path), RMSNorm)
                                                for c in report.converted)
    assert isinstance(converted.tgt_emb, CentredEmbedding)  # read by the tied output projection too
    dec_norm = next(c for c in report.converted if c.path == "dec_norm")
    assert dec_norm.kept == ["weight", "bias"]
    tol = TOLERANCE[dtype]
    with torch.no_grad():
        want, got = model(src, mask, tgt), converted(src, mask, tgt)
        assert (want - got).abs().max() <= tol * max(1.0, want.abs().max().item())
        # the beam search's incremental decoder: the same modules on one new position at a time
        steps = []
        for m in (model, converted):
            state, ctx, pctx = m.encode(src, mask)
            log_probs, state = m.step_log_probs(tgt[0], state, ctx, pctx, mask)
            log_probs, _ = m.step_log_probs(tgt[1], state, ctx, pctx, mask)
            steps.append(log_probs)
        assert (steps[0] - steps[1]).abs().max() <= tol * max(1.0, steps[0].abs().max().item())


def test_the_post_norm_transformer_the_paper_ran_is_refused():
    model = Transformer(30, 16, 2, 32, 1, 1, 0.0, NormSpec("layernorm"), "post")
    with pytest.raises(NotConvertible, match=r"^encoder\.0\.res_attn\.norm: .*post-LN"):
        convert_exact(model, _batch())
