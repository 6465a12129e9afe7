"""Every norm as the chain of elementary tensor ops the paper's frameworks ran, with autograd's backward: each op
one pass over memory, as in Theano, TensorFlow, Lasagne and PyTorch 1.x, where the paper measured its
speed-ups. `norm.impl=composite` selects these; `fused` (the default) takes the fastest kernel
(`rmsnorm.kernels.dispatch`), `torch` takes `F.layer_norm` / `F.rms_norm` where torch has one.

The formulas follow the upstream code:
- LayerNorm: Nematus' and zero's `layer_norm`: mean, centre, mean of squares of the centred values, rsqrt of
  it plus eps, scale, shift;
- RMSNorm: the authors' TensorFlow layer: mean of squares, rsqrt plus eps, scale (then shift, where a bias is);
- pRMSNorm: the same statistic over the first k features;
- L2-Norm: sum of squares, rsqrt plus eps, scale.
Statistics in the input's dtype, as those frameworks computed them (the runs were float32). A leaf beside
`rmsnorm.reference`: imports torch only.
"""

from __future__ import annotations

import torch


def _affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def layer_norm(x: torch.Tensor, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdim=True)
    return _affine(centred * torch.rsqrt(var + eps), weight, bias)


def rms_norm(x: torch.Tensor, weight=None, bias=None, eps: float = 1e-8, k: int | None = None) -> torch.Tensor:
    stat = x if k is None or k == x.shape[-1] else x[..., :k]
    ms = (stat * stat).mean(-1, keepdim=True)
    return _affine(x * torch.rsqrt(ms + eps), weight, bias)


def l2_norm(x: torch.Tensor, weight=None, bias=None, eps: float = 1e-8) -> torch.Tensor:
    ss = (x * x).sum(-1, keepdim=True)
    return _affine(x * torch.rsqrt(ss + eps), weight, bias)
