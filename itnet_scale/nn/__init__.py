"""Modules of the ITNet model."""

from itnet_scale.nn.backbone import ITNetBackbone
from itnet_scale.nn.block import MLP, ITNetBlock
from itnet_scale.nn.encoders import ImageEncoder, PointEncoder, TextEncoder, farthest_point_sampling
from itnet_scale.nn.feature_map import FeatureMap
from itnet_scale.nn.integral_transform import IntegralTransform, configure_integrators

__all__ = ["MLP", "FeatureMap", "ITNetBackbone", "ITNetBlock", "ImageEncoder", "IntegralTransform", "PointEncoder",
           "TextEncoder", "configure_integrators", "farthest_point_sampling"]
