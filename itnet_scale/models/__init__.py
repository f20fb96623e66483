"""ITNet models and the registry that builds them by config name."""

from itnet_scale.models.config import LayerConfig, ModelConfig
from itnet_scale.models.itnet import (
    Encoded,
    ITNetForClassification,
    ITNetForNLVR2,
    ITNetForPretraining,
    ITNetForVQA,
    ITNetModel,
)
from itnet_scale.models.registry import create_model, list_models, model_config

__all__ = ["Encoded", "ITNetForClassification", "ITNetForNLVR2", "ITNetForPretraining", "ITNetForVQA", "ITNetModel",
           "LayerConfig", "ModelConfig", "create_model", "list_models", "model_config"]
