"""The hand-written Adams of experiments/core/training/adam.py against their reference codes' formulas, written out
by hand here."""

import math

import pytest
import torch

from experiments.core.training.adam import OrderEmbeddingAdam, RootEpsAdam, torch_adam, upstream_step_ratio


def test_adam_with_eps_inside_the_root_is_the_weight_norm_codes():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    grads = [torch.randn(5) * 1e-4, torch.randn(5)]  # one step where eps matters, one where it does not
    opt = RootEpsAdam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    ref, m, v = p.detach().clone(), torch.zeros(5), torch.zeros(5)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        ref -= 0.1 * (m / (1 - 0.9**t)) / torch.sqrt(v / (1 - 0.999**t) + 1e-8)  # nn.adam_updates, line by line
        torch.testing.assert_close(p.detach(), ref)
    # with eps 0 it is torch's Adam
    q, r = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    a, b = RootEpsAdam([q], lr=0.01, eps=0.0), torch.optim.Adam([r], lr=0.01, eps=0.0)
    for _ in range(3):
        q.grad, r.grad = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, -2.0, 3.0])
        a.step(), b.step()
    torch.testing.assert_close(q.detach(), r.detach())


def test_the_order_embedding_adam_is_upstreams_optim_py_line_by_line():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    opt = OrderEmbeddingAdam([p], lr=1e-3)
    ref, m, v = p.detach().clone(), torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    # the first steps (where the missing correction matters most), one with gradients near sqrt(eps)
    grads = [torch.randn(6, dtype=torch.float64) * s for s in (1.0, 1e-4, 0.3, 2.0, 1.0)]
    for i, g in enumerate(grads):
        p.grad = g.clone()
        opt.step()
        # order-embedding optim.py:15-36
        b1, b2, e = 0.1, 0.001, 1e-8
        i_t = i + 1.0
        fix1 = 1.0 - b1**i_t
        fix2 = 1.0 - b2**i_t
        lr_t = 1e-3 * (math.sqrt(fix2) / fix1)
        m = (b1 * g) + ((1.0 - b1) * m)
        v = (b2 * g**2) + ((1.0 - b2) * v)
        g_t = m / (torch.sqrt(v) + e)
        ref = ref - (lr_t * g_t)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=0)
    # step 1 moves each weight by lr * sqrt(0.999) / 0.9 * 0.1 / sqrt(0.001) = 3.51 lr whatever the gradient
    q = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    one = OrderEmbeddingAdam([q], lr=1e-3)
    q.grad = torch.tensor([0.5, -2.0, 30.0], dtype=torch.float64)
    one.step()
    torch.testing.assert_close(q.detach().abs(), torch.full((3,), 1e-3 * 3.5118, dtype=torch.float64),
                               rtol=1e-4, atol=0)


def test_the_order_embedding_adams_steps_against_torchs():
    """Its steps over torch's Adam's on the same gradients: what the docs and the protocol table say."""
    assert upstream_step_ratio(1) == pytest.approx(3.51, abs=0.01)
    assert max(range(1, 100), key=upstream_step_ratio) == 12
    assert upstream_step_ratio(12) == pytest.approx(6.57, abs=0.01)
    assert min(upstream_step_ratio(t) for t in range(10, 16)) >= 6.5
    assert upstream_step_ratio(250) == pytest.approx(2.13, abs=0.01)
    assert upstream_step_ratio(1000) == pytest.approx(1.26, abs=0.01)
    # and measured: a constant gradient for 15 steps, each step of one against the other's
    p, r = (torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in range(2))
    ours, theirs = OrderEmbeddingAdam([p], lr=1e-3, eps=0.0), torch.optim.Adam([r], lr=1e-3, eps=0.0)
    for t in range(1, 16):
        before_p, before_r = p.detach().clone(), r.detach().clone()
        p.grad, r.grad = (torch.tensor([1.0, -3.0], dtype=torch.float64) for _ in range(2))
        ours.step(), theirs.step()
        ratio = (p.detach() - before_p) / (r.detach() - before_r)
        torch.testing.assert_close(ratio, torch.full((2,), upstream_step_ratio(t), dtype=torch.float64))


def test_retrieval_takes_the_order_embedding_adam_under_preset_paper_only():
    from experiments.retrieval.task import ADAMS
    from tests.conftest import compose_cfg

    assert ADAMS["upstream"] is OrderEmbeddingAdam and ADAMS["torch"] is torch_adam
    adam = {p: compose_cfg(["task=retrieval", f"preset={p}"]).task.optim.adam for p in ("paper", "demo", "smoke")}
    assert adam == {"paper": "upstream", "demo": "torch", "smoke": "torch"}


def test_torch_adam_is_torchs_adam_fused():
    """The tasks' torch Adam (fused kernel) takes the steps of torch's default Adam, up to rounding."""
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    ours = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    a = torch_adam(ours, lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    b = torch.optim.Adam(theirs, lr=1e-2, betas=(0.9, 0.98), eps=1e-9, foreach=False)
    assert isinstance(a, torch.optim.Adam) and a.defaults["fused"]
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for group, opt in ((ours, a), (theirs, b)):
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q)
