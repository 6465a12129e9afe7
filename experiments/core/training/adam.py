"""Adam as two reference codebases write it by hand, where it differs from torch.optim.Adam. Both keep torch's
moments (m <- beta1 m + (1 - beta1) g, v <- beta2 v + (1 - beta2) g^2, betas in torch's convention) and differ
in the update:

- `RootEpsAdam`, the weight-normalisation code's (TimSalimans/weight_norm nn.py:80-85, `adam_updates`), used by
  CIFAR-10: eps inside the root of the corrected second moment, p -= lr * m_hat / sqrt(v_hat + eps). torch's
  Adam divides by sqrt(v_hat) + eps; the two differ where gradients are small (|g| near sqrt(eps) = 1e-4),
  where this one takes smaller steps.
- `OrderEmbeddingAdam`, the order-embedding code's (ivendrov/order-embedding optim.py:15-37), used by
  retrieval: it names the weight of the new gradient b1 = 0.1 = 1 - beta1 and b2 = 0.001 = 1 - beta2, and its
  bias correction raises those instead of the decays: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t), and
  p -= lr_t * m / (sqrt(v) + eps), eps on the uncorrected root. In effect there is no bias correction: against
  torch's Adam on the same gradients its steps are 3.5x larger at step 1, 6.6x at steps 10-15 (the peak, step
  12), 4.5x at 50, 2.1x at 250, 1.26x at 1000 and within 1% from step 3925 (`upstream_step_ratio`).

Where a task uses torch's own Adam it takes it through `torch_adam`: its fused kernel."""

from __future__ import annotations

import math

import torch


def torch_adam(params, **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam with its fused kernel, one call for every parameter: on the CPU torch's default steps
    tensor by tensor in Python (for 101 small tensors, as in the demo Transformer, about 8 ms against about
    1 ms fused in one single-run microbenchmark, torch 2.14, one thread). Same update; only the rounding can
    differ."""
    return torch.optim.Adam(params, fused=True, **kwargs)


class _ForeachAdam(torch.optim.Optimizer):
    """The moments of every parameter of a group in fused foreach calls; subclasses apply the update."""

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
            self._update(params, m, v, t, lr, beta1, beta2, eps)
        return loss

    def _update(self, params, m, v, t: int, lr: float, beta1: float, beta2: float, eps: float) -> None:
        raise NotImplementedError


class RootEpsAdam(_ForeachAdam):
    """p -= lr * m_hat / sqrt(v_hat + eps): the weight-normalisation code's Adam (with eps 0, torch's)."""

    def _update(self, params, m, v, t, lr, beta1, beta2, eps):
        # the current beta1 in the correction, as the reference (its mom1 drops to 0.5 half-way)
        denom = torch._foreach_div(v, 1 - beta2**t)
        torch._foreach_add_(denom, eps)
        torch._foreach_sqrt_(denom)
        torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - beta1**t))


class OrderEmbeddingAdam(_ForeachAdam):
    """p -= lr * sqrt(1 - (1 - beta2)^t) / (1 - (1 - beta1)^t) * m / (sqrt(v) + eps): the order-embedding
    code's Adam, bias correction with the gradients' weights in place of the decays."""

    def _update(self, params, m, v, t, lr, beta1, beta2, eps):
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, value=-upstream_lr_factor(t, beta1, beta2) * lr)


def upstream_lr_factor(t: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """order-embedding optim.py:23-25: fix1 = 1 - b1^t, fix2 = 1 - b2^t, lr_t = lr * sqrt(fix2) / fix1."""
    b1, b2 = 1 - beta1, 1 - beta2
    return math.sqrt(1 - b2**t) / (1 - b1**t)


def upstream_step_ratio(t: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """How much larger the order-embedding code's step t is than torch's Adam's on the same gradients (eps
    aside): its lr factor over the true correction sqrt(1 - beta2^t) / (1 - beta1^t)."""
    return upstream_lr_factor(t, beta1, beta2) / (math.sqrt(1 - beta2**t) / (1 - beta1**t))
