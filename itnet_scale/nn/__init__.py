"""Modules of the ITNet model."""

from itnet_scale.nn.feature_map import FeatureMap
from itnet_scale.nn.integral_transform import IntegralTransform, configure_integrators

__all__ = ["FeatureMap", "IntegralTransform", "configure_integrators"]
