"""Swap the normalisation layers of a user's model for another norm of the registry: `swap_norms`.

This changes the function the model computes (LayerNorm -> RMSNorm drops the centring and, where RMSNorm has no
shift, the bias): it is for training or fine-tuning with the new norm, or for timing it, not for keeping a trained
model's outputs. The report says what each swapped module became and what of its state was copied, dropped or
reset, so a checkpoint's keys can be matched.

torch's own layers can compute a norm without calling it: `nn.TransformerEncoderLayer`'s inference fast path
reads `norm1.weight`, `norm1.bias` and `norm1.eps` and computes LayerNorm itself. Where a swap puts another norm
into such a layer, that layer's fast path is turned off (its `activation_relu_or_gelu` flag, one of the
conditions torch checks), so the new norm is what runs in every mode; the report names those layers.

Which modules are norms: `torch.nn.LayerNorm`, `torch.nn.RMSNorm` and this library's row norms (subclasses too),
over their last dimension. Other classes join with `register_norm_type(cls, read)`, where `read(module)` gives
the `NormState` of a module of that class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from rmsnorm.norms import AffineNorm, ChannelMapNorm
from rmsnorm.reference import NormConfigError
from rmsnorm.registry import norm_info
from rmsnorm.spec import build_norm


@dataclass
class NormState:
    """What a norm module holds, read the same way whatever its class: its width, eps, gain and shift."""

    size: int
    eps: float | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


def _read_torch(module: nn.Module) -> NormState:
    shape = tuple(module.normalized_shape)
    if len(shape) != 1:
        raise NormConfigError(f"normalises over {shape}: only norms over the last dimension can be swapped")
    eps = module.eps if module.eps is not None else None  # torch's RMSNorm: None means finfo(dtype).eps
    return NormState(shape[0], eps, module.weight, getattr(module, "bias", None))


def _read_ours(module: nn.Module) -> NormState:
    return NormState(module.num_features, module.eps, module.weight, module.bias)


_READERS: dict[type, Callable[[nn.Module], NormState]] = {nn.LayerNorm: _read_torch, AffineNorm: _read_ours}
if hasattr(nn, "RMSNorm"):
    _READERS[nn.RMSNorm] = _read_torch


def register_norm_type(cls: type, read: Callable[[nn.Module], NormState]) -> None:
    """Make modules of `cls` (and its subclasses) swappable: `read(module)` returns their `NormState`."""
    _READERS[cls] = read


def _reader(module: nn.Module) -> Callable[[nn.Module], NormState] | None:
    if isinstance(module, ChannelMapNorm):  # a norm over maps, not rows: not this function's business
        return None
    for cls in type(module).__mro__:
        if cls in _READERS:
            return _READERS[cls]
    return None


@dataclass
class Swapped:
    path: str
    source: str  # the class it was
    target: str  # the class it became
    eps: float
    copied: list[str] = field(default_factory=list)  # state copied across (weight, bias)
    dropped: list[str] = field(default_factory=list)  # state the new norm has no place for (keys leave state_dict)
    reset: list[str] = field(default_factory=list)  # state the new norm has and the old had not, at its initial value


@dataclass
class SwapReport:
    to: str
    swapped: list[Swapped]
    fast_paths_off: list[str]  # layers whose inference fast path would have computed the old norm
    function_changing: bool = True

    @property
    def dropped_keys(self) -> list[str]:
        return [f"{s.path}.{name}" for s in self.swapped for name in s.dropped]

    @property
    def added_keys(self) -> list[str]:
        return [f"{s.path}.{name}" for s in self.swapped for name in s.reset]

    def __str__(self) -> str:
        lines = [f"swap_norms -> {self.to}: {len(self.swapped)} modules; this changes the function the model computes",
                 "| module | from | to | eps | copied | dropped | reset |", "|---|---|---|---|---|---|---|"]
        for s in self.swapped:
            lines.append(f"| {s.path} | {s.source} | {s.target} | {s.eps:g} | {', '.join(s.copied) or '-'} | "
                         f"{', '.join(s.dropped) or '-'} | {', '.join(s.reset) or '-'} |")
        if self.fast_paths_off:
            lines.append("inference fast path turned off (it computes LayerNorm itself): "
                         + ", ".join(self.fast_paths_off))
        return "\n".join(lines)


def replace_at(model: nn.Module, path: str, new: nn.Module) -> None:
    """The submodule at `path` (dotted) replaced by `new`."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def swap_norms(model: nn.Module, to: str = "rmsnorm", *, impl: str | None = None, p: float | None = None,
               eps: str | float = "copy", init: str = "copy", inplace: bool = False) -> tuple[nn.Module, SwapReport]:
    """Every norm module of `model` replaced by the registry's norm `to` (see the module's docstring for which
    modules count), on the same device and dtype. `eps="copy"` keeps each module's eps (torch's RMSNorm's
    `None` becomes its dtype's machine epsilon, what it computes with), a number sets it; `init="copy"` copies
    the gain and, where the new norm has a shift, the bias (`"reset"`: the new norm's initial values); `impl` sets
    how the new norms compute (`rmsnorm.functional.IMPLS`); `p` is pRMSNorm's share. Returns the model (a copy
    unless `inplace`) and a `SwapReport`."""
    if init not in ("copy", "reset"):
        raise ValueError(f"init={init!r}: use 'copy' or 'reset'")
    if not (eps == "copy" or isinstance(eps, (int, float))):
        raise ValueError(f"eps={eps!r}: use 'copy' or a number")
    info = norm_info(to)  # an unknown name fails here, listing the known ones
    if not inplace:
        model = copy.deepcopy(model)
    found = [(path, module, _reader(module)) for path, module in model.named_modules() if path]
    found = [(path, module, read) for path, module, read in found if read is not None]
    swapped = []
    for path, module, read in found:
        try:
            state = read(module)
        except NormConfigError as exc:
            raise NormConfigError(f"{path} ({type(module).__name__}): {exc}") from None
        ref = state.weight if state.weight is not None else next(module.parameters(), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        new_eps = float(eps) if eps != "copy" else (state.eps if state.eps is not None else torch.finfo(dtype).eps)
        kwargs = {"eps": new_eps, "affine": state.weight is not None}
        if p is not None:
            kwargs["p"] = p
        new = build_norm(to, state.size, **kwargs)
        if impl is not None and isinstance(new, AffineNorm):
            new.impl = impl
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        entry = Swapped(path, type(module).__name__, type(new).__name__, new_eps)
        for name in ("weight", "bias"):
            old_value, new_param = getattr(state, name), getattr(new, name, None)
            if old_value is not None and new_param is None:
                entry.dropped.append(name)
            elif old_value is None and isinstance(new_param, nn.Parameter):
                entry.reset.append(name)
            elif old_value is not None and isinstance(new_param, nn.Parameter):
                if init == "copy":
                    with torch.no_grad():
                        new_param.copy_(old_value.detach())
                    entry.copied.append(name)
                else:
                    entry.reset.append(name)
        new.train(module.training)
        replace_at(model, path, new)
        swapped.append(entry)
    return model, SwapReport(info.name, swapped, fast_paths_off(model))


def fast_paths_off(model: nn.Module) -> list[str]:
    """torch's fused encoder layer computes LayerNorm from norm1/norm2's tensors in inference: turned off (in
    place) in every layer whose norms are no longer LayerNorms, so the new norm is what runs. Returns their paths."""
    fast_off = []
    for path, module in model.named_modules():
        swapped_here = isinstance(module, nn.TransformerEncoderLayer) and not all(
            type(getattr(module, n, None)) is nn.LayerNorm for n in ("norm1", "norm2"))
        if swapped_here and getattr(module, "activation_relu_or_gelu", 0):
            module.activation_relu_or_gelu = 0
            fast_off.append(path or "(model)")
    return fast_off
