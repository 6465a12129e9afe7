"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019) and the norms it is compared with.

Depends on torch only: `from rmsnorm import RMSNorm` drops into any model.
"""

from rmsnorm.functional import (
    DEFAULT_EPS,
    DEFAULT_P,
    NormConfigError,
    l2_norm,
    layer_norm,
    partial_size,
    rms_norm,
)
from rmsnorm.norms import (
    NORM_NAMES,
    ChannelMapNorm,
    L2Norm,
    LayerNorm,
    NoNorm,
    NormSpec,
    PartialRMSNorm,
    RMSNorm,
    build_norm,
    build_norm2d,
    check_norm_name,
)
from rmsnorm.rnn import NormGRU, NormGRUCell

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_P",
    "NORM_NAMES",
    "ChannelMapNorm",
    "L2Norm",
    "LayerNorm",
    "NoNorm",
    "NormGRU",
    "NormGRUCell",
    "NormConfigError",
    "NormSpec",
    "PartialRMSNorm",
    "RMSNorm",
    "build_norm",
    "build_norm2d",
    "check_norm_name",
    "l2_norm",
    "layer_norm",
    "partial_size",
    "rms_norm",
]
