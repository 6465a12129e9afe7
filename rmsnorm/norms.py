"""Norm layers. Feature norms act on the last dimension of any tensor; `ChannelMapNorm` acts on (N, C, H, W)
maps and normalises each channel over its H x W positions with a per-channel gain and bias, as the paper's
CIFAR-10 runs did. Names, defaults and the factory live in `rmsnorm.registry`."""

from __future__ import annotations

import torch
from torch import nn

from rmsnorm import functional as RF
from rmsnorm.reference import (
    DEFAULT_EPS,
    DEFAULT_P,
    NormConfigError,
    affine,
    check_p,
    partial_size,
    spread_positions,
)


class AffineNorm(nn.Module):
    """Shared gain/bias handling: gain initialised to 1, bias to 0, each optional. `impl` says how the norm is
    computed (`rmsnorm.functional.IMPLS`; `NormSpec(impl=...)` sets it)."""

    impl: str = "fused"

    def __init__(self, num_features: int, eps: float, affine: bool, bias: bool, param_shape: tuple[int, ...]):
        super().__init__()
        if num_features < 1:
            raise NormConfigError(f"a norm needs at least one feature, got {num_features}")
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(param_shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(param_shape)) if bias else None

    def statistic(self) -> tuple[int, float] | None:
        """(k, inv_n) when this norm is `x * rsqrt(inv_n * sum(x[:k]^2) + eps)` before its gain and shift (the
        RMS family); None for any other norm."""
        return None

    def row_stat(self) -> tuple[int, float] | None:
        """`statistic()` when this norm has a gain and no shift, the form the fused block kernel computes
        (`rmsnorm.blocks.BlockNorm`); None for any other norm."""
        stat = self.statistic()
        return stat if stat is not None and self.weight is not None and self.bias is None else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, bias={self.bias is not None}"


class RMSNorm(AffineNorm):
    """y = x / RMS(x) * g (+ b), RMS over the last dimension."""

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, affine: bool = True, bias: bool = False):
        super().__init__(num_features, eps, affine, bias, (num_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.rms_norm(x, self.weight, self.bias, self.eps, impl=self.impl)

    def statistic(self):
        return self.num_features, 1.0 / self.num_features


class PartialRMSNorm(AffineNorm):
    """pRMSNorm: the RMS is estimated from the first k = int(d * p) features, then all d are scaled by it."""

    def __init__(self, num_features: int, p: float = DEFAULT_P, eps: float = DEFAULT_EPS, affine: bool = True,
                 bias: bool = False):
        super().__init__(num_features, eps, affine, bias, (num_features,))
        self.p = float(p)
        self.k = partial_size(num_features, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.rms_norm(x, self.weight, self.bias, self.eps, k=self.k, impl=self.impl)

    def statistic(self):
        return self.k, 1.0 / self.k

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}, k={self.k}"


class L2Norm(AffineNorm):
    """y = x / ||x||_2 * g (+ b): RMSNorm without the sqrt(d) factor."""

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, affine: bool = True, bias: bool = False):
        super().__init__(num_features, eps, affine, bias, (num_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.l2_norm(x, self.weight, self.bias, self.eps, impl=self.impl)

    def statistic(self):
        return self.num_features, 1.0


class LayerNorm(AffineNorm):
    """torch's fused LayerNorm with the same options as the other norms (bias on by default, as usual)."""

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, affine: bool = True, bias: bool = True):
        super().__init__(num_features, eps, affine, bias, (num_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.layer_norm(x, self.weight, self.bias, self.eps, impl=self.impl)


class NoNorm(nn.Identity):
    """The baseline: passes its input through. Accepts and ignores the other norms' arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__()


def _partial_map_rms(maps: torch.Tensor, eps: float, p: float, impl: str) -> torch.Tensor:
    """pRMSNorm of each channel of (N, C, H, W) maps, its statistic from the `spread_positions` lattice
    (torch ops for every impl: the fused kernels take the first k features only)."""
    n, c, h, w = maps.shape
    rows = maps.reshape(n, c, h * w)
    positions = spread_positions(h, w, p)
    if positions.numel() == h * w:
        return RF.rms_norm(rows, eps=eps, impl=impl).view_as(maps)
    x = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    ms = x.index_select(-1, positions.to(x.device)).square().mean(-1, keepdim=True)
    return (x * torch.rsqrt(ms + eps)).to(rows.dtype).view_as(maps)


# each map form on (N, C, H, W) maps: a statistic over each channel's H*W positions (p: pRMSNorm's share)
_MAP_FUNCTIONS = {
    "rmsnorm": lambda maps, eps, p, impl: RF.rms_norm(maps.flatten(2), eps=eps, impl=impl).view_as(maps),
    "prmsnorm": _partial_map_rms,
    "l2norm": lambda maps, eps, p, impl: RF.l2_norm(maps.flatten(2), eps=eps, impl=impl).view_as(maps),
    "layernorm": lambda maps, eps, p, impl: RF.layer_norm(maps.flatten(2), eps=eps, impl=impl).view_as(maps),
}


class ChannelMapNorm(AffineNorm):
    """A norm over H x W for each channel of an (N, C, H, W) map, with per-channel gain and bias.

    pRMSNorm takes its statistic from k = int(H*W*p) positions (at least `PARTIAL_MIN_FEATURES`) on a
    lattice over the whole map (`rmsnorm.reference.spread_positions`), not from the first k: the top rows.
    """

    KINDS = tuple(_MAP_FUNCTIONS)

    def __init__(self, kind: str, num_channels: int, eps: float = DEFAULT_EPS, p: float = DEFAULT_P,
                 affine: bool = True, bias: bool = True):
        if kind not in _MAP_FUNCTIONS:
            raise NormConfigError(f"no channel-map form of '{kind}'; there is one of {', '.join(self.KINDS)}")
        super().__init__(num_channels, eps, affine, bias, (num_channels, 1, 1))
        self.kind = kind
        self.p = check_p(p) if kind == "prmsnorm" else float(p)
        self._normalise = _MAP_FUNCTIONS[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects (N, C, H, W), got shape {tuple(x.shape)}")
        if self.kind == "prmsnorm":  # the H x W its lattice was taken on (partial_statistics); straight into the
            self.__dict__["last_map"] = x.shape[-2:]  # instance dict: nn.Module's __setattr__ on every call costs
        return affine(self._normalise(x, self.eps, self.p, self.impl), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.kind}, {super().extra_repr()}" + (f", p={self.p}" if self.kind == "prmsnorm" else "")


class StepBatchNorm(nn.Module):
    """Batch normalisation inside a recurrent cell (Cooijmans et al. 2016): statistics of its own for each
    time step, from the batch in training (over the rows a mask marks valid) and from running estimates per
    step in evaluation; steps past `max_steps` share the last step's estimates. The gain starts at 0.1, as
    the reference code sets it, so the tanh and sigmoids start in their linear range."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, gain: float = 0.1,
                 bias: bool = False, max_steps: int = 512):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.max_steps = num_features, float(eps), momentum, max_steps
        self.weight = nn.Parameter(torch.full((num_features,), float(gain)))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None
        self.register_buffer("running_mean", torch.zeros(max_steps, num_features))
        self.register_buffer("running_var", torch.ones(max_steps, num_features))

    def forward(self, x: torch.Tensor, t: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, d) at time step t; mask: (B,) 1 for rows that hold a real step."""
        s = min(int(t), self.max_steps - 1)
        mean, var = self.running_mean[s], self.running_var[s]
        if not self.training:
            return torch.nn.functional.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
        # torch's batch norm is one fused op with its own backward (the chain of tensor ops below made the
        # reader's batch-norm rows 6x slower a step than its other norms); it takes the valid rows only
        rows = None if mask is None or bool(mask.all()) else mask.nonzero().squeeze(1)
        if rows is not None and len(rows) < 2:
            return self._masked_by_hand(x, s, mask)
        valid = x if rows is None else x.index_select(0, rows)
        with torch.no_grad():  # the running estimates by hand: a buffer handed to torch's op is saved for backward,
            var_b, mean_b = torch.var_mean(valid, 0, correction=1)  # and the next step sharing a slot bumps it
            self.running_mean[s].lerp_(mean_b, self.momentum)
            self.running_var[s].lerp_(var_b, self.momentum)
        out = torch.nn.functional.batch_norm(valid, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return out if rows is None else x.new_zeros(x.shape).index_copy(0, rows, out)  # padded rows: 0, never read

    def _masked_by_hand(self, x: torch.Tensor, s: int, mask: torch.Tensor) -> torch.Tensor:
        """Fewer than two valid rows, where torch's batch norm refuses: the statistics written out."""
        return self._by_formula(x.unsqueeze(0), mask.to(x.dtype).view(1, -1, 1), slice(s, s + 1))[0]

    def _by_formula(self, x: torch.Tensor, w: torch.Tensor | None, slots: slice) -> torch.Tensor:
        """x (T, B, d) normalised with each step's statistics over the rows w (T, B, 1) marks valid (all where
        w is None), the running estimates of `slots` (one per step) updated; padded rows come out 0."""
        n = x.new_full((x.shape[0], 1, 1), float(x.shape[1])) if w is None else w.sum(1, keepdim=True).clamp_min(1.0)
        mean = (x if w is None else x * w).sum(1, keepdim=True) / n
        centred = x - mean
        var = (centred.pow(2) if w is None else centred.pow(2) * w).sum(1, keepdim=True) / n
        with torch.no_grad():
            self.running_mean[slots].lerp_(mean.squeeze(1), self.momentum)
            self.running_var[slots].lerp_((var * n / (n - 1).clamp_min(1.0)).squeeze(1), self.momentum)
        out = affine(centred * torch.rsqrt(var + self.eps), self.weight, self.bias)
        return out if w is None else out * w

    def forward_sequence(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (T, B, d), every step with its own statistics; mask (T, B). The same values as stepping
        (`forward` at t = 0, 1, ...) up to float rounding, computed for all steps at once."""
        steps = x.shape[0]
        if not self.training:
            slot = torch.arange(steps, device=x.device).clamp_max(self.max_steps - 1)
            mean, var = self.running_mean[slot].unsqueeze(1), self.running_var[slot].unsqueeze(1)
            return affine((x - mean) * torch.rsqrt(var + self.eps), self.weight, self.bias)
        if steps > self.max_steps:  # later steps share the last slot's running estimates, updated in turn
            masks = [None] * steps if mask is None else mask.unbind(0)
            # unbind, not x[t]: the backward of each x[t] would fill a zero tensor the size of the whole sequence
            return torch.stack([self(step, t, m) for t, (step, m) in enumerate(zip(x.unbind(0), masks, strict=True))])
        return self._by_formula(x, None if mask is None else mask.to(x.dtype).unsqueeze(-1), slice(0, steps))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, max_steps={self.max_steps}, bias={self.bias is not None}"


def partial_statistics(model: nn.Module) -> list[str]:
    """What each pRMSNorm layer of a model takes its statistic from, one line per distinct layer size:
    'd=64: k=4 (p=0.0625)' for features, 'map 16x16: k=128 of 256 positions (p=0.5)' for a channel map (its
    lattice; known once the layer has run). At small widths k can fall to a handful of features, whose RMS is a
    noisy estimate of the whole vector's: what a demo's shrinking does to pRMSNorm."""
    seen = {}
    for module in model.modules():
        if isinstance(module, PartialRMSNorm):
            seen.setdefault((0, module.num_features), f"d={module.num_features}: k={module.k} (p={module.p:g})")
        elif isinstance(module, ChannelMapNorm) and module.kind == "prmsnorm" and hasattr(module, "last_map"):
            h, w = (int(v) for v in module.last_map)
            k = len(spread_positions(h, w, module.p))
            seen.setdefault((1, h * w), f"map {h}x{w}: k={k} of {h * w} positions (p={module.p:g})")
    return [seen[key] for key in sorted(seen)]
