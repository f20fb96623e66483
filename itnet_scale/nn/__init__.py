"""Modules of the ITNet model."""

from itnet_scale.nn.backbone import ITNetBackbone, configure_activation_checkpointing
from itnet_scale.nn.block import MLP, DropPath, ITNetBlock, TransformConfig
from itnet_scale.nn.encoders import (
    EncodedTokens,
    ImageEncoder,
    MultimodalEncoder,
    PointEncoder,
    TextEncoder,
    farthest_point_sampling,
)
from itnet_scale.nn.feature_map import FeatureMap
from itnet_scale.nn.heads import (
    ClassificationHead,
    ContrastiveHead,
    MaskedPatchHead,
    MaskedPointHead,
    MLMHead,
    Pooling,
    RegressionHead,
    VQAHead,
    chamfer_distance,
    mask_tokens,
    mean_pool,
)
from itnet_scale.nn.integral_transform import IntegralTransform, KernelConfig, configure_integrators

__all__ = ["MLP", "ClassificationHead", "ContrastiveHead", "DropPath", "EncodedTokens", "FeatureMap",
           "ITNetBackbone", "ITNetBlock", "ImageEncoder", "IntegralTransform", "KernelConfig", "MLMHead",
           "MaskedPatchHead", "MaskedPointHead", "MultimodalEncoder", "PointEncoder", "Pooling", "RegressionHead",
           "TextEncoder", "TransformConfig", "VQAHead", "chamfer_distance", "configure_activation_checkpointing",
           "configure_integrators", "farthest_point_sampling", "mask_tokens", "mean_pool"]
