"""Adam as the weight-normalisation code (TimSalimans/weight_norm, nn.adam_updates) writes it, with eps inside
the root of the second moment: p -= lr * m_hat / sqrt(v_hat + eps). torch's Adam divides by sqrt(v_hat) + eps;
the two differ where gradients are small (|g| near sqrt(eps) = 1e-4), where this one takes smaller steps."""

from __future__ import annotations

import torch


class RootEpsAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0 or not eps >= 0:
            raise ValueError(f"lr={lr} must be > 0 and eps={eps} >= 0")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                # the current beta1 in the correction, as the reference (its mom1 drops to 0.5 half-way)
                denom = (v / (1 - beta2**t)).add_(eps).sqrt_()
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
        return loss
