"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019) and the norms it is compared with.

Depends on torch only: `from rmsnorm import RMSNorm` drops into any model. Layers import downwards only:
reference (the maths) <- kernels (fast paths, tensors in, tensors out) <- functional <- norms <- registry
<- spec <- blocks <- rnn; swap (a user's model's norms swapped) sits on spec, and convert (the exact
LayerNorm -> RMSNorm conversion of a pre-LN model) on swap.
"""

from rmsnorm.blocks import BlockNorm
from rmsnorm.convert import ConvertReport, NotConvertible, convert_exact
from rmsnorm.functional import l2_norm, layer_norm, rms_norm
from rmsnorm.norms import ChannelMapNorm, L2Norm, LayerNorm, NoNorm, PartialRMSNorm, RMSNorm, StepBatchNorm
from rmsnorm.reference import DEFAULT_EPS, DEFAULT_P, NormConfigError, partial_size
from rmsnorm.registry import REFERENCE_NORM, NormInfo, norm_info, norm_names, register_norm, unregister_norm
from rmsnorm.rnn import NormGRU, NormGRUCell, NormLSTM, NormLSTMCell
from rmsnorm.spec import NormSpec, build_norm, build_norm2d
from rmsnorm.swap import SwapReport, register_norm_type, swap_norms

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_P",
    "BlockNorm",
    "ChannelMapNorm",
    "ConvertReport",
    "L2Norm",
    "LayerNorm",
    "NoNorm",
    "NotConvertible",
    "NormConfigError",
    "NormGRU",
    "NormGRUCell",
    "NormLSTM",
    "NormLSTMCell",
    "NormInfo",
    "NormSpec",
    "REFERENCE_NORM",
    "PartialRMSNorm",
    "RMSNorm",
    "StepBatchNorm",
    "SwapReport",
    "build_norm",
    "build_norm2d",
    "convert_exact",
    "l2_norm",
    "layer_norm",
    "norm_info",
    "norm_names",
    "partial_size",
    "register_norm",
    "register_norm_type",
    "rms_norm",
    "swap_norms",
    "unregister_norm",
]
