"""The one list of norms: name -> how to build it over features and over conv maps, its usual shift and eps,
whether it may sit inside a recurrent cell, and its label and place in reports. Everything else (configs'
validation, the factory, the recurrent cells, the report's row order) reads it from here.

Adding a norm to the library is one `register_norm(NormInfo(...))` call; see the README, "Adding a norm".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rmsnorm.norms import ChannelMapNorm, L2Norm, LayerNorm, NoNorm, PartialRMSNorm, RMSNorm, StepBatchNorm
from rmsnorm.reference import DEFAULT_EPS, NormConfigError

#: builder(size, eps=..., p=..., affine=..., bias=...) -> module; size is features or channels
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class NormInfo:
    name: str
    label: str  # how reports and plots name it
    features: Builder  # a norm over the last dimension
    maps: Builder | None = None  # a norm for (N, C, H, W) maps; None: no map form
    shift: bool = False  # its usual bias (LayerNorm: yes; the RMS family: no, as the paper)
    map_shift: bool = True  # the map forms carry a per-channel bias, as the weight-norm code's layers
    eps: float = DEFAULT_EPS  # its default eps
    uses_p: bool = False  # takes pRMSNorm's p
    recurrent: bool = True  # may sit inside a recurrent cell as a plain norm
    per_step: Builder | None = None  # a norm with statistics per time step for recurrent cells (batch norm)
    reparametrize: Callable[[nn.Module], nn.Module] | None = None  # a norm that is a property of the layer
    order: int = 100  # its row in report tables


_REGISTRY: dict[str, NormInfo] = {}


#: the norm every speed-up is measured against, as the paper does: (T_reference - T_norm) / T_reference
REFERENCE_NORM = "layernorm"

def register_norm(info: NormInfo, *, replace: bool = False) -> NormInfo:
    """Add a norm under `info.name`; registering a name twice is an error unless `replace=True`."""
    if info.name in _REGISTRY and not replace:
        raise NormConfigError(f"a norm named '{info.name}' is registered already; pass replace=True to change it")
    _REGISTRY[info.name] = info
    return info


def unregister_norm(name: str) -> None:
    _REGISTRY.pop(name, None)


def norm_names() -> list[str]:
    """Every registered name, in report order."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def norm_info(name: str) -> NormInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NormConfigError(f"unknown norm '{name}'; valid norms are: {', '.join(norm_names())}") from None


def recurrent_norm_names(per_step: bool = False) -> list[str]:
    """Norms a recurrent cell can hold; with `per_step`, also those with per-time-step statistics."""
    return [n for n in norm_names() if _REGISTRY[n].recurrent or per_step and _REGISTRY[n].per_step is not None]


def _map(kind: str) -> Builder:
    return lambda c, eps, p, affine, bias: ChannelMapNorm(kind, c, eps=eps, p=p, affine=affine, bias=bias)


def _no_norm(size, **_) -> nn.Module:
    return NoNorm()


def _batch_norm(d, eps, p, affine, bias) -> nn.Module:
    return nn.BatchNorm1d(d, eps=eps, affine=affine)


def _batch_norm_2d(c, eps, p, affine, bias) -> nn.Module:
    return nn.BatchNorm2d(c, eps=eps, affine=affine)


def _step_batch_norm(d, eps, p, affine, bias) -> nn.Module:
    return StepBatchNorm(d, eps=eps, bias=bool(bias))


def _weight_norm(layer: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(layer)


for _info in [
    NormInfo("none", "Baseline", _no_norm, _no_norm, order=0),
    NormInfo("batchnorm", "BatchNorm", _batch_norm, _batch_norm_2d, eps=1e-5, recurrent=False,
             per_step=_step_batch_norm, order=10),
    # the paper's Table 6 row: the same norm, which the reading task also applies to its feed-forward
    # projections (upstream's --bn-everywhere); anywhere else it is plain batchnorm
    NormInfo("bn_everywhere", "BatchNorm-Everywhere", _batch_norm, _batch_norm_2d, eps=1e-5, recurrent=False,
             per_step=_step_batch_norm, order=11),
    NormInfo("weightnorm", "WeightNorm", _no_norm, _no_norm, recurrent=False, reparametrize=_weight_norm, order=20),
    NormInfo("layernorm", "LayerNorm", lambda d, eps, p, affine, bias: LayerNorm(d, eps, affine, bias),
             _map("layernorm"), shift=True, order=30),
    NormInfo("l2norm", "L2-Norm", lambda d, eps, p, affine, bias: L2Norm(d, eps, affine, bias), _map("l2norm"),
             order=40),
    NormInfo("rmsnorm", "RMSNorm", lambda d, eps, p, affine, bias: RMSNorm(d, eps, affine, bias), _map("rmsnorm"),
             order=50),
    NormInfo("prmsnorm", "pRMSNorm", lambda d, eps, p, affine, bias: PartialRMSNorm(d, p, eps, affine, bias),
             _map("prmsnorm"), uses_p=True, order=60),
]:
    register_norm(_info)
