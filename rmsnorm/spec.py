"""`NormSpec`: one kind of norm with its settings, validated once, then used to build every norm of a model.
The configs instantiate it (`configs/norm/*.yaml`); `build_norm` / `build_norm2d` are its one-line forms."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rmsnorm.functional import check_impl
from rmsnorm.norms import AffineNorm
from rmsnorm.reference import DEFAULT_P, NormConfigError, check_p
from rmsnorm.registry import NormInfo, norm_info


@dataclass(frozen=True)
class NormSpec:
    name: str = "rmsnorm"
    eps: float | None = None  # None: the norm's own default (1e-8 inside the root; torch's 1e-5 for batchnorm)
    p: float = DEFAULT_P  # pRMSNorm's share of features
    affine: bool = True
    bias: bool | None = None  # None: the norm's usual shift
    impl: str = "fused"  # fused | composite | torch (rmsnorm.functional.IMPLS): how the norm is computed

    def __post_init__(self):
        check_impl(self.impl)
        info = norm_info(self.name)
        if self.eps is None:
            object.__setattr__(self, "eps", info.eps)
        if info.uses_p:
            check_p(self.p)
        if not self.eps >= 0:
            raise NormConfigError(f"eps must be >= 0, got {self.eps}")

    @property
    def info(self) -> NormInfo:
        return norm_info(self.name)

    def build(self, num_features: int) -> nn.Module:
        """The norm over the last dimension of `num_features` features."""
        info = self.info
        bias = info.shift if self.bias is None else self.bias
        return self._with_impl(info.features(int(num_features), eps=self.eps, p=self.p, affine=self.affine,
                                             bias=bias))

    def build2d(self, num_channels: int) -> nn.Module:
        """The norm of (N, C, H, W) maps with `num_channels` channels."""
        info = self.info
        if info.maps is None:
            raise NormConfigError(f"norm '{self.name}' has no form for (N, C, H, W) maps")
        bias = info.map_shift if self.bias is None else self.bias
        return self._with_impl(info.maps(int(num_channels), eps=self.eps, p=self.p, affine=self.affine, bias=bias))

    def _with_impl(self, layer: nn.Module) -> nn.Module:
        """The layer computing as `impl` says (norms without the choice, such as torch's batch norm, as they are)."""
        if self.impl != "fused" and isinstance(layer, AffineNorm):
            layer.impl = self.impl
        return layer

    def reparametrize(self, layer: nn.Module) -> nn.Module:
        """Weight normalisation is a property of the layer, not a separate norm: apply it here when asked."""
        fn = self.info.reparametrize
        return layer if fn is None else fn(layer)


def build_norm(name: str, normalized_shape: int, *, eps: float | None = None, p: float = DEFAULT_P,
               affine: bool = True, bias: bool | None = None) -> nn.Module:
    """A norm over the last dimension by name; `bias=None` takes the norm's usual shift."""
    return NormSpec(name, eps, p, affine, bias).build(normalized_shape)


def build_norm2d(name: str, num_channels: int, *, eps: float | None = None, p: float = DEFAULT_P,
                 affine: bool = True, bias: bool | None = None) -> nn.Module:
    """A norm for (N, C, H, W) maps by name; the map forms carry a per-channel bias unless `bias=False`."""
    return NormSpec(name, eps, p, affine, bias).build2d(num_channels)
