"""Norm layers and the factory that builds them by name.

Feature norms act on the last dimension of any tensor. Channel-map norms act on (N, C, H, W) maps and
normalise each channel over its H x W positions with a per-channel gain and bias, as the paper's CIFAR-10
runs did. `batchnorm` and `weightnorm` are torch's own layers, kept as baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rmsnorm import functional as RF
from rmsnorm.functional import DEFAULT_EPS, DEFAULT_P, NormConfigError, check_p, partial_size

NORM_NAMES = ("none", "layernorm", "rmsnorm", "prmsnorm", "l2norm", "batchnorm", "weightnorm")


def check_norm_name(name: str) -> str:
    if name not in NORM_NAMES:
        raise NormConfigError(f"unknown norm '{name}'; valid norms are: {', '.join(NORM_NAMES)}")
    return name


class _AffineNorm(nn.Module):
    """Shared gain/bias handling: gain initialised to 1, bias to 0, each optional."""

    def __init__(self, num_features: int, eps: float, affine: bool, bias: bool, param_shape: tuple[int, ...]):
        super().__init__()
        if num_features < 1:
            raise NormConfigError(f"a norm needs at least one feature, got {num_features}")
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(param_shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(param_shape)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, bias={self.bias is not None}"


class RMSNorm(_AffineNorm):
    """y = x / RMS(x) * g (+ b), RMS over the last dimension."""

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, affine: bool = True, bias: bool = False):
        super().__init__(num_features, eps, affine, bias, (num_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.rms_norm(x, self.weight, self.bias, self.eps)


class PartialRMSNorm(_AffineNorm):
    """pRMSNorm: the RMS is estimated from the first k = int(d * p) features, then all d are scaled by it."""

    def __init__(
        self,
        num_features: int,
        p: float = DEFAULT_P,
        eps: float = DEFAULT_EPS,
        affine: bool = True,
        bias: bool = False,
    ):
        super().__init__(num_features, eps, affine, bias, (num_features,))
        self.p = float(p)
        self.k = partial_size(num_features, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.rms_norm(x, self.weight, self.bias, self.eps, k=self.k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}, k={self.k}"


class L2Norm(_AffineNorm):
    """y = x / ||x||_2 * g (+ b): RMSNorm without the sqrt(d) factor."""

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, affine: bool = True, bias: bool = False):
        super().__init__(num_features, eps, affine, bias, (num_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.l2_norm(x, self.weight, self.bias, self.eps)


class LayerNorm(_AffineNorm):
    """torch's fused LayerNorm with the same options as the other norms (bias on by default, as usual)."""

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, affine: bool = True, bias: bool = True):
        super().__init__(num_features, eps, affine, bias, (num_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.layer_norm(x, self.weight, self.bias, self.eps)


class NoNorm(nn.Identity):
    """The baseline: passes its input through. Accepts and ignores the other norms' arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__()


class ChannelMapNorm(_AffineNorm):
    """A norm over H x W for each channel of an (N, C, H, W) map, with per-channel gain and bias.

    pRMSNorm takes its statistic from the first k = int(H*W*p) positions in row-major order.
    """

    def __init__(
        self,
        kind: str,
        num_channels: int,
        eps: float = DEFAULT_EPS,
        p: float = DEFAULT_P,
        affine: bool = True,
        bias: bool = True,
    ):
        if kind not in ("rmsnorm", "prmsnorm", "l2norm", "layernorm"):
            raise NormConfigError(f"no channel-map form of '{kind}'")
        super().__init__(num_channels, eps, affine, bias, (num_channels, 1, 1))
        self.kind = kind
        self.p = check_p(p) if kind == "prmsnorm" else float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        rows = x.reshape(n, c, h * w)
        if self.kind == "rmsnorm":
            y = RF.rms_norm(rows, eps=self.eps)
        elif self.kind == "prmsnorm":
            y = RF.rms_norm(rows, eps=self.eps, k=partial_size(h * w, self.p))
        elif self.kind == "l2norm":
            y = RF.l2_norm(rows, eps=self.eps)
        else:
            y = RF.layer_norm(rows, eps=self.eps)
        y = y.view(n, c, h, w)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{self.kind}, {super().extra_repr()}" + (f", p={self.p}" if self.kind == "prmsnorm" else "")


def build_norm(
    name: str,
    normalized_shape: int,
    *,
    eps: float = DEFAULT_EPS,
    p: float = DEFAULT_P,
    affine: bool = True,
    bias: bool | None = None,
) -> nn.Module:
    """A norm over the last dimension by name. `bias=None` takes each norm's usual default
    (on for LayerNorm, off for the RMS family, as in the paper)."""
    check_norm_name(name)
    d = int(normalized_shape)
    if name == "rmsnorm":
        return RMSNorm(d, eps=eps, affine=affine, bias=bool(bias))
    if name == "prmsnorm":
        return PartialRMSNorm(d, p=p, eps=eps, affine=affine, bias=bool(bias))
    if name == "l2norm":
        return L2Norm(d, eps=eps, affine=affine, bias=bool(bias))
    if name == "layernorm":
        return LayerNorm(d, eps=eps, affine=affine, bias=True if bias is None else bias)
    if name == "batchnorm":
        return nn.BatchNorm1d(d, eps=max(eps, 1e-5), affine=affine)
    # none, and weightnorm, which reparametrises the preceding layer instead (see NormSpec.reparametrize)
    return NoNorm()


def build_norm2d(
    name: str,
    num_channels: int,
    *,
    eps: float = DEFAULT_EPS,
    p: float = DEFAULT_P,
    affine: bool = True,
    bias: bool | None = None,
) -> nn.Module:
    """A norm for (N, C, H, W) maps by name. The map forms carry a per-channel bias by default (`bias=None`)."""
    check_norm_name(name)
    if name == "batchnorm":
        return nn.BatchNorm2d(num_channels, eps=max(eps, 1e-5), affine=affine)
    if name in ("none", "weightnorm"):
        return NoNorm()
    return ChannelMapNorm(name, num_channels, eps=eps, p=p, affine=affine, bias=True if bias is None else bias)


@dataclass(frozen=True)
class NormSpec:
    """Everything a model needs to place one kind of norm: validated once, then used for every layer."""

    name: str = "rmsnorm"
    eps: float = DEFAULT_EPS
    p: float = DEFAULT_P
    affine: bool = True
    bias: bool | None = None

    def __post_init__(self):
        check_norm_name(self.name)
        if self.name == "prmsnorm":
            check_p(self.p)
        if not self.eps >= 0:
            raise NormConfigError(f"eps must be >= 0, got {self.eps}")

    def build(self, num_features: int) -> nn.Module:
        return build_norm(self.name, num_features, eps=self.eps, p=self.p, affine=self.affine, bias=self.bias)

    def build2d(self, num_channels: int) -> nn.Module:
        return build_norm2d(self.name, num_channels, eps=self.eps, p=self.p, affine=self.affine, bias=self.bias)

    def reparametrize(self, layer: nn.Module) -> nn.Module:
        """Weight normalisation is a property of the layer, not a separate norm: apply it here when asked."""
        if self.name == "weightnorm":
            return nn.utils.parametrizations.weight_norm(layer)
        return layer
