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
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                self.state[p]["step"] += 1
            # every parameter of a group steps together: one count, and each update is one fused call for the
            # whole group (a per-parameter loop would launch six kernels per tensor on the GPU every step)
            t = self.state[params[0]]["step"]
            grads = [p.grad for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            # the current beta1 in the correction, as the reference (its mom1 drops to 0.5 half-way)
            denom = torch._foreach_div(v, 1 - beta2**t)
            torch._foreach_add_(denom, eps)
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - beta1**t))
        return loss
