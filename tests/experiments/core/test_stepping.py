"""The one optimiser step every task shares: clip rules on hand-made gradients, accumulation over micro-batches,
the schedule, and that no task's own code steps an optimiser."""

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.core.errors import UserError
from experiments.core.training.stepping import check_clip_rule, clip_gradients, optimizer_step

REPO = Path(__file__).resolve().parents[3]


def _params_with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.tensor(g, dtype=torch.float32)
    return params


def test_global_clipping_scales_all_gradients_by_one_factor():
    a, b = _params_with_grads([3.0, 0.0], [0.0, 4.0])  # global norm 5
    clip_gradients([a, b], "global", 1.0)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 0.8]), rtol=1e-5, atol=1e-6)


def test_per_tensor_clipping_bounds_each_tensor_on_its_own():
    a, b = _params_with_grads([3.0, 0.0], [0.0, 0.5])  # norms 3 and 0.5
    clip_gradients([a, b], "per_tensor", 1.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.0, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 0.5]))  # under the bound: untouched


@pytest.mark.parametrize("rule, bound", [("none", 1.0), ("global", None)])
def test_no_rule_or_no_bound_clips_nothing(rule, bound):
    (a,) = _params_with_grads([30.0, 40.0])
    clip_gradients([a], rule, bound)
    torch.testing.assert_close(a.grad, torch.tensor([30.0, 40.0]))


def test_an_unknown_rule_is_a_one_line_error():
    with pytest.raises(UserError, match="task.optim.clip=sometimes is not a clip rule; use one of none, global"):
        check_clip_rule("sometimes", "reading")


class ToyTask:
    """The smallest thing optimizer_step drives: a linear model, a squared loss, optional micro-batches."""

    def __init__(self, parts: int, clip: str = "none", clip_norm=None):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
        self.cfg = OmegaConf.create({"optim": {"clip": clip, "clip_norm": clip_norm}})
        self.parts = parts

    def step_batches(self, batch):
        x, y = batch
        n = len(x)
        return [(x[i::self.parts], y[i::self.parts], n) for i in range(self.parts)]

    def loss(self, model, part):
        x, y, n = part
        return ((model(x).squeeze(1) - y) ** 2).sum() / n  # the whole batch's mean whatever the split

    def clip_rule(self):
        return self.cfg.optim.clip, self.cfg.optim.clip_norm


def test_micro_batches_give_the_whole_batch_step_and_the_schedule_advances():
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(12, 3, generator=g), torch.randn(12, generator=g))
    whole, split = ToyTask(1), ToyTask(3)
    loss_whole, loss_split = optimizer_step(whole, whole.model, batch), optimizer_step(split, split.model, batch)
    torch.testing.assert_close(loss_whole, loss_split)
    for a, b in zip(whole.model.parameters(), split.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert whole.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_no_task_steps_an_optimiser_itself():
    # the loop owns backward, clipping and the optimiser (experiments/core/training/stepping.py)
    for path in sorted((REPO / "experiments").glob("*/task.py")):
        if path.parent.name == "core":
            continue
        text = path.read_text()
        found = re.findall(r"\.backward\(|optimizer\.step\(|zero_grad\(|clip_grad_norm_", text)
        assert not found, f"{path.relative_to(REPO)} calls {found}"
