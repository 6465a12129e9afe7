"""ConvPool-CNN-C as the weight-normalisation paper's CIFAR-10 code builds it.

Every conv and NIN (1x1 conv) layer is conv -> norm -> leaky ReLU(0.1); the norm comes before the
non-linearity, where the reference code's `normalizer(...)` wrapped each layer, the final dense layer's 10
logits included (`normalise_logits`). `weightnorm` reparametrises every conv, NIN and the final dense layer
instead, initialised from data as the reference (`data_dependent_init`). As the reference, batch- and
weight-norm layers draw W from N(0, `bn_wn_init_std`) (the others keep Glorot), and the baseline is
W = g * V with a fixed per-unit gain g set by the same data-dependent initialisation (`baseline_data_init`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from rmsnorm import NormSpec
from rmsnorm.reference import PARTIAL_MIN_FEATURES


class GaussianNoise(nn.Module):
    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return x + torch.randn_like(x) * self.std
        return x


class MaxPool2d(nn.MaxPool2d):
    """torch's max pooling, computed on a channels-last copy and returned in the usual layout: the same values
    and gradients (the maximum is the maximum), but on the CPU torch's NCHW kernel is several times slower
    than its NHWC one (2 x 2 pooling of 25 x 16 x 32 x 32 maps, forward and backward: 17 ms against 2.6 ms,
    copies included, one thread), which made the two pools about a tenth of a demo step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or self.return_indices:  # indices: NCHW positions, as torch's
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


class ConvNormAct(nn.Sequential):
    def __init__(self, norm: NormSpec, c_in: int, c_out: int, kernel: int, padding: int, slope: float):
        map_norm = norm.build2d(c_out)
        # a norm with its own per-channel shift makes the conv's bias redundant
        conv_bias = getattr(map_norm, "bias", None) is None
        super().__init__(nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=conv_bias), map_norm,
                         nn.LeakyReLU(slope))


class FixedGain(nn.Module):
    """W = g * V with a per-output-unit gain g that is not trained: the weight-norm code's baseline (its
    InitLayer), whose g is set once from data (`ConvPoolCNNC.data_dependent_init`) and V trained."""

    def __init__(self, units: int):
        super().__init__()
        self.register_buffer("g", torch.ones(units))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.g.view(-1, *([1] * (v.dim() - 1))) * v


def _glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the reference's (Lasagne's) default. torch's default init
    shrinks activations by about sqrt(3) per layer, which would starve the no-norm baseline."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ConvPoolCNNC(nn.Module):
    def __init__(
        self,
        norm: NormSpec,
        widths: tuple[int, int] = (96, 192),
        num_classes: int = 10,
        dropout: float = 0.5,
        noise_std: float = 0.15,
        leaky_slope: float = 0.1,
        normalise_logits: bool = True,
        bn_wn_init_std: float | None = 0.05,
        baseline_data_init: bool = True,
    ):
        super().__init__()
        a, b = widths

        def block(c_in, c_out, kernel=3, padding=1):
            return ConvNormAct(norm, c_in, c_out, kernel, padding, leaky_slope)

        self.features = nn.Sequential(
            GaussianNoise(noise_std),
            block(3, a), block(a, a), block(a, a),
            MaxPool2d(2), nn.Dropout(dropout),
            block(a, b), block(b, b), block(b, b),
            MaxPool2d(2), nn.Dropout(dropout),
            block(b, b, padding=0),
            block(b, b, kernel=1, padding=0), block(b, b, kernel=1, padding=0),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        # the reference wraps the final dense layer in the normaliser too: the 10 logits are RMS-, layer- or
        # batch-normalised, with the norm's gain and shift (as on the maps) in place of the layer's bias
        logit_spec = replace(norm, bias=norm.info.map_shift if norm.bias is None else norm.bias)
        if norm.info.uses_p:  # pRMSNorm: 12.5% of 10 logits is one logit; the statistic takes all 10 instead
            logit_spec = replace(logit_spec, p=max(norm.p, min(1.0, PARTIAL_MIN_FEATURES / num_classes)))
        logit_norm = logit_spec.build(num_classes)
        if not normalise_logits or isinstance(logit_norm, nn.Identity):
            logit_norm = nn.Identity()
        has_shift = getattr(logit_norm, "bias", None) is not None
        self.classifier = nn.Sequential(nn.Linear(b, num_classes, bias=not has_shift), logit_norm)
        self.apply(_glorot_init)
        layers = [m[0] for m in self.features.modules() if isinstance(m, ConvNormAct)] + [self.classifier[0]]
        if bn_wn_init_std is not None and norm.name in ("batchnorm", "weightnorm"):
            for layer in layers:  # the reference's BatchNormLayer and WeightNormLayer redraw W from N(0, 0.05)
                nn.init.normal_(layer.weight, 0.0, bn_wn_init_std)
        # after init: weight_norm's magnitude g is taken from the initialised weight
        for module in self.features.modules():
            if isinstance(module, ConvNormAct):
                module[0] = norm.reparametrize(module[0])
        self.classifier[0] = norm.reparametrize(self.classifier[0])
        if baseline_data_init and norm.name == "none":
            for layer in layers:  # the reference's baseline: W = g * V, g fixed after its data-dependent init
                nn.utils.parametrize.register_parametrization(layer, "weight", FixedGain(layer.weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def weight_norm_layers(self) -> list[nn.Module]:
        """The conv, NIN and dense layers with a gain g to initialise from data, in forward order: weight-
        normalised (g trained) or the baseline's fixed gain (empty for other norms)."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and hasattr(m, "parametrizations")]

    @torch.no_grad()
    def data_dependent_init(self, x: torch.Tensor) -> None:
        """Weight normalisation's data-dependent initialisation (Salimans & Kingma 2016, as their CIFAR code
        does it): layer by layer, in forward order, scale g and shift b so that the layer's pre-activations on
        this batch have zero mean and unit variance per output channel. The baseline goes through the same
        with its fixed gain, as the reference's InitLayer."""
        was_training = self.training
        self.eval()  # no noise, no dropout: the statistics of the layer itself
        for layer in self.weight_norm_layers():
            y = self._output_of(layer, x)
            dims = [d for d in range(y.dim()) if d != 1]
            mean, std = y.mean(dims), y.std(dims).clamp_min(1e-8)
            gain = layer.parametrizations.weight[0]
            g = gain.g if isinstance(gain, FixedGain) else layer.parametrizations.weight.original0
            g.div_(std.view(g.shape))
            if layer.bias is not None:
                layer.bias.sub_(mean).div_(std)
        self.train(was_training)

    def _output_of(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen = {}
        hook = layer.register_forward_hook(lambda mod, inp, out: seen.setdefault("y", out))
        try:
            self(x)
        finally:
            hook.remove()
        return seen["y"]
